//! 2-D convolution on the CPU as im2col + GEMM (Caffe's `im2col`/`col2im`, Jia et al. 2014),
//! NCHW, f32, with the bias fused into the GEMM's output, and both backwards as GEMMs:
//! dX = col2im(Wᵀ·dY), dW = Σₙ dYₙ·colₙᵀ, db = Σ dY. The GEMMs are the `gemm` crate's (the one
//! candle's matmul uses). Batches split over threads image by image; a batch smaller than the
//! thread count lets each GEMM use the threads instead. Scratch buffers are per thread and reused.

use super::matmul::{matmul, matmul_strided, transpose, Mat};
use super::tune::{Algo, Pass};
use super::{
    f32_slice, split_range, tensor_from, threads, uninit_vec, winograd, with_f32, with_scratch,
};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

/// The shapes of one convolution: input `[b, ci, h, w]`, weight `[co, ci, kh, kw]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub b: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geometry {
    pub fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let [b, ci, h, w] = <[usize; 4]>::try_from(x).map_err(|_| bad_rank("input", x))?;
        let [co, ci2, kh, kw] = <[usize; 4]>::try_from(wt).map_err(|_| bad_rank("weight", wt))?;
        if ci != ci2 {
            bail!("conv2d: input has {ci} channels, weight expects {ci2}");
        }
        if stride == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: kernel {kh}×{kw} does not fit a {h}×{w} input padded by {pad}");
        }
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        Ok(Geometry {
            b,
            ci,
            h,
            w,
            co,
            kh,
            kw,
            stride,
            pad,
            ho,
            wo,
        })
    }
    /// Rows of the im2col matrix: ci·kh·kw.
    fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }
    /// Output pixels per image: ho·wo.
    fn p(&self) -> usize {
        self.ho * self.wo
    }
    fn in_len(&self) -> usize {
        self.ci * self.h * self.w
    }
    /// How `pass` of this convolution runs (`super::tune`).
    pub fn algo(&self, pass: Pass) -> Algo {
        super::tune::choose(self, pass)
    }
    /// A 3×3, stride-1, padding-1 conv: the shape Winograd applies to.
    pub fn winograd_shape(&self) -> bool {
        self.kh == 3 && self.kw == 3 && self.stride == 1 && self.pad == 1
    }
    /// The output columns `ox_lo..ox_hi` whose input column `ox·s + j − pad` (kernel column
    /// `j`) lies inside the image; the others read padding.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.pad.saturating_sub(j).div_ceil(s).min(self.wo);
        let hi = if self.w + self.pad > j {
            ((self.w + self.pad - j - 1) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
    /// A 1×1, stride-1, unpadded conv: the input image already is its im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

fn bad_rank(what: &str, d: &[usize]) -> candle_core::Error {
    candle_core::Error::Msg(format!("conv2d: {what} must be 4-D, got {d:?}"))
}

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static DCOL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static DYT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `col[(c·kh + i)·kw + j, oy·wo + ox] = x[c, oy·s + i − pad, ox·s + j − pad]` (0 outside).
fn im2col(x: &[f32], g: &Geometry, col: &mut [f32]) {
    let (p, s) = (g.p(), g.stride);
    for c in 0..g.ci {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * p..][..p];
                let (ox_lo, ox_hi) = g.valid_cols(j);
                for oy in 0..g.ho {
                    let out = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let iy = (oy * s + i) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let xr = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    out[..ox_lo].fill(0.0);
                    out[ox_hi..].fill(0.0);
                    let x0 = ox_lo * s + j - g.pad;
                    if s == 1 {
                        out[ox_lo..ox_hi].copy_from_slice(&xr[x0..x0 + (ox_hi - ox_lo)]);
                    } else {
                        for (k, o) in out[ox_lo..ox_hi].iter_mut().enumerate() {
                            *o = xr[x0 + k * s];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: adds every column entry back onto its input pixel.
fn col2im_add(col: &[f32], g: &Geometry, x: &mut [f32]) {
    let (p, s) = (g.p(), g.stride);
    for c in 0..g.ci {
        let xc = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * p..][..p];
                let (ox_lo, ox_hi) = g.valid_cols(j);
                for oy in 0..g.ho {
                    let iy = (oy * s + i) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let xr = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let src = &row[oy * g.wo + ox_lo..oy * g.wo + ox_hi];
                    let x0 = ox_lo * s + j - g.pad;
                    if s == 1 {
                        for (d, v) in xr[x0..x0 + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (k, v) in src.iter().enumerate() {
                            xr[x0 + k * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// How a batch uses the threads: images in parallel (each GEMM on one thread), or, for a
/// batch smaller than the thread count, one image at a time with threaded GEMMs.
fn plan(b: usize) -> (bool, Parallelism) {
    let t = threads();
    if b >= t && t > 1 {
        (true, Parallelism::None)
    } else if t > 1 {
        (false, Parallelism::Rayon(t))
    } else {
        (false, Parallelism::None)
    }
}

/// `y = conv(x, w) + bias`: x `[b, ci, h, w]`, w `[co, ci, kh, kw]`, bias `[co]` or, per
/// image, `[b, co]` (a conv bias plus a time-embedding shift in one) → `[b, co, ho, wo]`.
pub fn forward(x: &[f32], w: &[f32], bias: &[f32], g: &Geometry) -> Vec<f32> {
    forward_packed(x, w, bias, g, None)
}

/// `forward`, with the Winograd-domain weights taken from the packed-weight cache under the
/// weight's id when `packed` names one (inference: `kernels::packed`).
fn forward_packed(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    g: &Geometry,
    packed: Option<candle_core::TensorId>,
) -> Vec<f32> {
    assert_eq!(x.len(), g.b * g.in_len());
    assert_eq!(w.len(), g.co * g.k());
    assert!(
        bias.len() == g.co || bias.len() == g.b * g.co,
        "conv2d: bias length"
    );
    if let Algo::Winograd(var) = g.algo(Pass::Forward) {
        let u = match packed {
            Some(id) => super::packed::winograd(id, var, w, g.co, g.ci),
            None => std::sync::Arc::new(winograd::prepare_weights(var, w, g.co, g.ci)),
        };
        return winograd::conv3x3(var, x, &u, Some(bias), g.b, g.ci, g.co, g.h, g.w, threads());
    }
    let (p, k) = (g.p(), g.k());
    let mut out = uninit_vec(g.b * g.co * p);
    let one = |n: usize, y: &mut [f32], par: Parallelism| {
        let bias_n = image_bias(bias, n, g.co);
        for (o, row) in y.chunks_exact_mut(p).enumerate() {
            row.fill(bias_n[o]);
        }
        let xn = &x[n * g.in_len()..(n + 1) * g.in_len()];
        if g.pointwise() {
            matmul(y, g.co, p, k, Mat::rows(w, k), Mat::rows(xn, p), true, par);
        } else {
            with_scratch(&COL, k * p, |col| {
                im2col(xn, g, col);
                matmul(y, g.co, p, k, Mat::rows(w, k), Mat::rows(col, p), true, par);
            });
        }
    };
    match plan(g.b) {
        (true, par) => out
            .par_chunks_mut(g.co * p)
            .enumerate()
            .for_each(|(n, y)| one(n, y, par)),
        (false, par) => out
            .chunks_mut(g.co * p)
            .enumerate()
            .for_each(|(n, y)| one(n, y, par)),
    }
    out
}

/// Image `n`'s bias: the shared `[co]` one or row n of a per-image `[b, co]` one.
pub(crate) fn image_bias(bias: &[f32], n: usize, co: usize) -> &[f32] {
    if bias.len() == co {
        bias
    } else {
        &bias[n * co..(n + 1) * co]
    }
}

/// Gradients of `sum(conv(x, w) + bias ⊙ dy)`: `(dx, dw, db)` with db per image, `[b, co]`
/// (summed over images by the caller for a shared bias).
///
/// dW is accumulated as dWᵀ `[K, co]` with dYₙ transposed first: every GEMM operand is then
/// column-major and the `gemm` crate skips packing (measured 3.5× faster for 64 ch at 32×32
/// than dW = dY·colᵀ on the row-major operands).
pub fn backward(x: &[f32], w: &[f32], dy: &[f32], g: &Geometry) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (p, k, inl) = (g.p(), g.k(), g.in_len());
    assert_eq!(x.len(), g.b * inl);
    assert_eq!(dy.len(), g.b * g.co * p);
    let dx_wino = match g.algo(Pass::GradInput) {
        Algo::Winograd(var) => Some(var),
        Algo::Im2col => None,
    };
    let mut dx = if let Some(var) = dx_wino {
        // dX = conv(dY, W rotated 180° with in/out swapped), also stride 1, padding 1.
        let flipped = winograd::flip_weights(w, g.co, g.ci);
        let u = winograd::prepare_weights(var, &flipped, g.ci, g.co);
        winograd::conv3x3(var, dy, &u, None, g.b, g.co, g.ci, g.h, g.w, threads())
    } else {
        uninit_vec(g.b * inl)
    };
    let dw_wino = match g.algo(Pass::GradWeight) {
        Algo::Winograd(var) => Some(winograd::grad_weight(
            var,
            x,
            dy,
            g.b,
            g.ci,
            g.co,
            g.h,
            g.w,
            threads(),
        )),
        Algo::Im2col => None,
    };
    // Nothing left for the per-image loop below but db.
    let im2col_free = dx_wino.is_some() && dw_wino.is_some();
    let (parallel, par) = plan(g.b);
    let ranges = split_range(g.b, if parallel { threads() } else { 1 });
    // dx slices for each range of images.
    let mut dx_parts = Vec::with_capacity(ranges.len());
    let mut rest = dx.as_mut_slice();
    for r in &ranges {
        let (a, b) = rest.split_at_mut(r.len() * inl);
        dx_parts.push(a);
        rest = b;
    }
    let mut db = vec![0f32; g.b * g.co];
    let mut db_parts = Vec::with_capacity(ranges.len());
    let mut rest = db.as_mut_slice();
    for r in &ranges {
        let (a, b) = rest.split_at_mut(r.len() * g.co);
        db_parts.push(a);
        rest = b;
    }
    let work = |((r, dxr), dbr): ((std::ops::Range<usize>, &mut [f32]), &mut [f32])| -> Vec<f32> {
        let mut dwt = if dw_wino.is_some() {
            Vec::new()
        } else {
            vec![0f32; k * g.co] // [K, co]
        };
        for (i, n) in r.enumerate() {
            let db = &mut dbr[i * g.co..(i + 1) * g.co];
            let xn = &x[n * inl..(n + 1) * inl];
            let dyn_ = &dy[n * g.co * p..(n + 1) * g.co * p];
            let dxn = &mut dxr[i * inl..(i + 1) * inl];
            for (o, row) in dyn_.chunks_exact(p).enumerate() {
                db[o] = super::sum_lanes(row);
            }
            if im2col_free {
                continue;
            }
            // dW [co, K], kept column-major (= dWᵀ row-major), += dYₙ · colₙᵀ
            let dw_acc = |dwt: &mut [f32], colt: Mat| {
                with_scratch(&DYT, p * g.co, |dyt| {
                    transpose(dyn_, g.co, p, dyt); // [P, co]
                    let dyt = Mat::transposed(dyt, g.co);
                    matmul_strided(dwt, (1, g.co), g.co, k, p, dyt, colt, true, par);
                })
            };
            if g.pointwise() {
                dw_acc(&mut dwt, Mat::transposed(xn, p));
                // dx_n = wᵀ · dy_n
                matmul(
                    dxn,
                    k,
                    p,
                    g.co,
                    Mat::transposed(w, k),
                    Mat::rows(dyn_, p),
                    false,
                    par,
                );
            } else {
                if dw_wino.is_none() {
                    with_scratch(&COL, k * p, |col| {
                        im2col(xn, g, col);
                        dw_acc(&mut dwt, Mat::transposed(col, p));
                    });
                }
                if dx_wino.is_some() {
                    continue;
                }
                with_scratch(&DCOL, k * p, |dcol| {
                    matmul(
                        dcol,
                        k,
                        p,
                        g.co,
                        Mat::transposed(w, k),
                        Mat::rows(dyn_, p),
                        false,
                        par,
                    );
                    dxn.fill(0.0);
                    col2im_add(dcol, g, dxn);
                });
            }
        }
        dwt
    };
    let jobs: Vec<_> = ranges.into_iter().zip(dx_parts).zip(db_parts).collect();
    let parts: Vec<Vec<f32>> = if parallel {
        jobs.into_par_iter().map(work).collect()
    } else {
        jobs.into_iter().map(work).collect()
    };
    if let Some(dw) = dw_wino {
        return (dx, dw, db);
    }
    let mut it = parts.into_iter();
    let mut dwt = it.next().expect("at least one range");
    for pw in it {
        dwt.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
    }
    let mut dw = uninit_vec(g.co * k);
    transpose(&dwt, k, g.co, &mut dw);
    (dx, dw, db)
}

/// The CustomOp: arguments `(x, weight, bias)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2d {
    pub stride: usize,
    pub padding: usize,
    /// The weight's id when its transformed form may be cached (`kernels::packed`).
    pub packed: Option<candle_core::TensorId>,
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "diffuse-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        super::count_forward();
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let y = forward_packed(
            f32_slice(s1, l1)?,
            f32_slice(s2, l2)?,
            f32_slice(s3, l3)?,
            &g,
            self.packed,
        );
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.co, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::new(x.dims(), w.dims(), self.stride, self.padding)?;
        let (dx, dw, db) = with_f32(x, |x| {
            with_f32(w, |w| with_f32(dy, |dy| Ok(backward(x, w, dy, &g))))
        })?;
        let db = if bias.dims().len() == 1 {
            let mut shared = vec![0f32; g.co];
            for row in db.chunks_exact(g.co) {
                shared.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            shared
        } else {
            db
        };
        Ok((
            Some(tensor_from(dx, x.dims())?),
            Some(tensor_from(dw, w.dims())?),
            Some(tensor_from(db, bias.dims())?),
        ))
    }
}

/// `conv(x, w) + bias` through the kernel (x, w, bias f32 on the CPU); bias `[co]` or `[b, co]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let bias = super::bias_or_zeros(bias, w)?;
    // Inference (a constant weight, an input that tracks no gradient): the weight's
    // transformed form is packed once and reused.
    let packed = (!w.is_variable() && !x.track_op() && w.is_contiguous()).then(|| w.id());
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &bias.contiguous()?,
        Conv2d {
            stride,
            padding,
            packed,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{gradcheck, max_rel, rand_tensor};

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize) -> Tensor {
        x.conv2d(w, pad, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, (), 1, 1)).unwrap())
            .unwrap()
    }

    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 7] = [
        // (b, ci, co, h/w, k, stride, pad)
        (2, 3, 5, 8, 3, 1, 1),
        (3, 4, 6, 7, 3, 2, 1),
        (1, 6, 4, 9, 1, 1, 0),
        (2, 2, 3, 6, 3, 1, 0),
        (4, 8, 8, 5, 3, 2, 0),
        (1, 3, 2, 10, 5, 1, 2),
        (5, 4, 4, 4, 3, 1, 1),
    ];

    #[test]
    fn forward_matches_candle() {
        for (i, &(b, ci, co, hw, k, s, p)) in CASES.iter().enumerate() {
            let x = rand_tensor(&[b, ci, hw, hw + 1], i as u64);
            let w = rand_tensor(&[co, ci, k, k], 100 + i as u64);
            let bias = rand_tensor(&[co], 200 + i as u64);
            let got = conv2d(&x, &w, Some(&bias), s, p).unwrap();
            let want = reference(&x, &w, &bias, s, p);
            assert_eq!(got.dims(), want.dims(), "case {i}");
            let e = max_rel(&got, &want);
            assert!(e < 1e-5, "case {i}: {e}");
        }
    }

    #[test]
    fn backward_matches_candle() {
        for (i, &(b, ci, co, hw, k, s, p)) in CASES.iter().enumerate() {
            let x =
                candle_core::Var::from_tensor(&rand_tensor(&[b, ci, hw, hw], i as u64)).unwrap();
            let w =
                candle_core::Var::from_tensor(&rand_tensor(&[co, ci, k, k], 9 + i as u64)).unwrap();
            let bias = candle_core::Var::from_tensor(&rand_tensor(&[co], 19 + i as u64)).unwrap();
            let proj = rand_tensor(reference(&x, &w, &bias, s, p).dims(), 29);
            let grads = |y: Tensor| (y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            let ours = grads(conv2d(&x, &w, Some(&bias), s, p).unwrap());
            let theirs = grads(reference(&x, &w, &bias, s, p));
            for (name, v) in [("x", &x), ("w", &w), ("b", &bias)] {
                let e = max_rel(ours.get(v).unwrap(), theirs.get(v).unwrap());
                assert!(e < 1e-5, "case {i} d{name}: {e}");
            }
        }
    }

    #[test]
    fn per_image_bias_forward_and_gradients() {
        // bias [b, co] = conv bias + a per-image shift, as the ResNet block's time embedding.
        let (b, ci, co) = (3, 4, 5);
        let x = candle_core::Var::from_tensor(&rand_tensor(&[b, ci, 6, 6], 1)).unwrap();
        let w = candle_core::Var::from_tensor(&rand_tensor(&[co, ci, 3, 3], 2)).unwrap();
        let shift = candle_core::Var::from_tensor(&rand_tensor(&[b, co], 3)).unwrap();
        let bias = candle_core::Var::from_tensor(&rand_tensor(&[co], 4)).unwrap();
        let proj = rand_tensor(&[b, co, 6, 6], 5);
        for &(s, p) in &[(1, 1), (2, 1), (1, 0)] {
            let full = shift.broadcast_add(&bias.unsqueeze(0).unwrap()).unwrap();
            let ours = conv2d(&x, &w, Some(&full), s, p).unwrap();
            let theirs = x
                .conv2d(&w, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&full.unsqueeze(2).unwrap().unsqueeze(3).unwrap())
                .unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-5, "forward s{s} p{p}");
            let proj = proj
                .narrow(2, 0, ours.dim(2).unwrap())
                .unwrap()
                .narrow(3, 0, ours.dim(3).unwrap())
                .unwrap();
            let grads = |y: Tensor| (y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            let (go, gt) = (grads(ours), grads(theirs));
            for (name, v) in [("x", &x), ("w", &w), ("shift", &shift), ("bias", &bias)] {
                let e = max_rel(go.get(v).unwrap(), gt.get(v).unwrap());
                assert!(e < 1e-5, "s{s} p{p} d{name}: {e}");
            }
        }
    }

    #[test]
    fn finite_differences() {
        for &(s, p) in &[(1, 1), (2, 1)] {
            let f = |t: &[Tensor]| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap();
            let inputs = [
                rand_tensor(&[2, 3, 6, 5], 1),
                rand_tensor(&[4, 3, 3, 3], 2),
                rand_tensor(&[4], 3),
            ];
            gradcheck(&f, &inputs, 12, 2e-3);
        }
    }

    #[test]
    fn finite_differences_for_each_algorithm() {
        // Forward, dX and dW of a stride-1 3×3 layer on each algorithm the tuner can pick.
        use crate::kernels::tune::{pinned, Algo};
        use crate::kernels::winograd::Variant;
        for algo in [
            Algo::Im2col,
            Algo::Winograd(Variant::F2),
            Algo::Winograd(Variant::F4),
        ] {
            let f = |t: &[Tensor]| conv2d(&t[0], &t[1], Some(&t[2]), 1, 1).unwrap();
            let inputs = [
                rand_tensor(&[2, 3, 9, 7], 11),
                rand_tensor(&[4, 3, 3, 3], 12),
                rand_tensor(&[4], 13),
            ];
            pinned(algo, || gradcheck(&f, &inputs, 12, 2e-3));
        }
    }

    #[test]
    fn packed_weights_are_reused_and_never_stale() {
        // An inference conv (constant weight, untracked input) caches its Winograd-domain
        // weight; a detached view of a variable changed in place must be transformed again.
        let var = candle_core::Var::from_tensor(&rand_tensor(&[6, 5, 3, 3], 1)).unwrap();
        let w = var.as_tensor().detach();
        let x = rand_tensor(&[2, 5, 12, 12], 2);
        let bias = rand_tensor(&[6], 3);
        let first = conv2d(&x, &w, Some(&bias), 1, 1).unwrap();
        assert!(
            super::super::packed::holds(w.id()),
            "an inference conv fills the cache"
        );
        let again = conv2d(&x, &w, Some(&bias), 1, 1).unwrap();
        assert_eq!(max_rel(&again, &first), 0.0);
        var.set(&rand_tensor(&[6, 5, 3, 3], 4)).unwrap();
        let changed = conv2d(&x, &w, Some(&bias), 1, 1).unwrap();
        let want = reference(&x, &w, &bias, 1, 1);
        assert!(
            max_rel(&changed, &want) < 1e-5,
            "served a stale packed weight"
        );
        // Training (a variable weight) never fills it.
        let v2 = candle_core::Var::from_tensor(&rand_tensor(&[6, 5, 3, 3], 5)).unwrap();
        conv2d(&x, &v2, Some(&bias), 1, 1).unwrap();
        assert!(!super::super::packed::holds(v2.id()));
    }

    #[test]
    fn geometry_errors_are_clear() {
        let e = Geometry::new(&[1, 3, 8, 8], &[4, 2, 3, 3], 1, 1).unwrap_err();
        assert!(e.to_string().contains("3 channels"), "{e}");
        let e = Geometry::new(&[1, 3, 2, 2], &[4, 3, 5, 5], 1, 0).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}

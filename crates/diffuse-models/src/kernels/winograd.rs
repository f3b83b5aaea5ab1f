//! Winograd convolution for stride-1, padding-1 3×3 layers (Lavin & Gray 2016, "Fast
//! Algorithms for Convolutional Neural Networks"), in two tile sizes: F(2×2, 3×3) (`f2`, 16
//! multiplies per tile and channel pair where direct convolution needs 36) and F(4×4, 3×3)
//! (`f4`, 36 where direct needs 144). Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, with the ⊙ over input
//! channels done as α² GEMMs `M[ξ] (co × tiles) = U[ξ] (co × ci) · V[ξ] (ci × tiles)`.
//!
//! All three passes of a layer run here:
//! - forward: `conv3x3` with `prepare_weights(w)` (transformed, then packed for `micro`);
//! - input gradient: the same routine, dX = conv(dY, W rotated by 180° with in/out swapped);
//! - weight gradient: `grad_weight`, the adjoint of the forward in the Winograd domain,
//!   `dU[ξ] = Σ_tiles (A dY Aᵀ)[ξ] · V[ξ]ᵀ` and `dW = Gᵀ dU G` (α² GEMMs over the tiles); for
//!   F(4×4) with channel counts that are multiples of 8 on channels-last transforms (`dw`).
//!
//! Images are grouped so that every GEMM has at least ~64 columns; groups run on separate
//! threads. A batch smaller than the thread count splits each group's transforms by channel
//! and its GEMMs by ξ instead, so batch 1 uses every core. The transforms run on 8 tiles of a
//! row at once; for rows of fewer tiles (`narrow`) they take a channel's tiles across all of
//! the group's images instead.
//!
//! `lanes` holds the data layout and lane primitives the transforms share, `grad` the weight
//! gradient's dY transform, `micro` the GEMMs' register tile.

mod dw;
mod f2;
mod f4;
mod grad;
mod lanes;
mod micro;

use grad::{output_grad_group_mv, output_grad_mv};
use lanes::{Planes, Shared, L};

use super::matmul::{matmul, Mat};
use super::uninit_vec;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    static V: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static M: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The Winograd tile size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Variant {
    /// F(2×2, 3×3): 4×4 input tiles.
    F2,
    /// F(4×4, 3×3): 6×6 input tiles.
    F4,
}

impl Variant {
    /// Output tile side m.
    pub fn tile(self) -> usize {
        match self {
            Variant::F2 => 2,
            Variant::F4 => 4,
        }
    }
    /// Points of the Winograd domain, α² = (m + 2)².
    pub fn xis(self) -> usize {
        (self.tile() + 2).pow(2)
    }
}

/// G g Gᵀ for one 3×3 filter g into `u` (α×α, row-major), given G on one filter column.
#[inline(always)]
fn filter_transform<const A: usize>(
    g: &[f32],
    gcol: impl Fn(f32, f32, f32) -> [f32; A],
    u: &mut [f32],
) {
    let t: [[f32; A]; 3] = std::array::from_fn(|j| gcol(g[j], g[3 + j], g[6 + j])); // (G g)ᵀ
    for i in 0..A {
        u[i * A..(i + 1) * A].copy_from_slice(&gcol(t[0][i], t[1][i], t[2][i]));
    }
}

/// Gᵀ d G for one α×α Winograd-domain gradient d (row-major), given Gᵀ on one α-vector: the
/// 3×3 filter gradient.
#[inline(always)]
fn filter_grad<const A: usize>(d: &[f32], gt: impl Fn(&[f32]) -> [f32; 3]) -> [f32; 9] {
    let mut t = [[0f32; A]; 3]; // (d G)ᵀ
    for i in 0..A {
        for (j, v) in gt(&d[i * A..(i + 1) * A]).into_iter().enumerate() {
            t[j][i] = v;
        }
    }
    let mut g = [0f32; 9];
    for (j, tj) in t.iter().enumerate() {
        for (i, v) in gt(tj).into_iter().enumerate() {
            g[i * 3 + j] = v;
        }
    }
    g
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Dims {
    fn new(var: Variant, ci: usize, co: usize, h: usize, w: usize) -> Self {
        let m = var.tile();
        Dims {
            ci,
            co,
            h,
            w,
            th: h.div_ceil(m),
            tw: w.div_ceil(m),
        }
    }
    fn tiles(&self) -> usize {
        self.th * self.tw
    }
}

/// `U[ξ][o][c] = (G g Gᵀ)[ξ]` for w `[co, ci, 3, 3]`, output channels split over the threads.
/// Filters are transformed 16 input channels at a time, so that each of the α² planes (their
/// stride a multiple of 4 KiB, which maps them onto the same cache sets) is written a whole
/// cache line at once.
pub fn transform_weights(var: Variant, w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    const CB: usize = 16;
    let xis = var.xis();
    let mut u = uninit_vec(xis * co * ci);
    let us = Shared::new(&mut u);
    let parts = if co * ci >= 4096 { super::threads() } else { 1 };
    split(co, parts, |os| {
        let mut block = [[0f32; CB]; 36];
        for o in os {
            for c0 in (0..ci).step_by(CB) {
                let n = CB.min(ci - c0);
                for k in 0..n {
                    let g = &w[(o * ci + c0 + k) * 9..][..9];
                    let t: &[f32] = match var {
                        Variant::F2 => &f2::weight(g),
                        Variant::F4 => &f4::weight(g),
                    };
                    for (xi, v) in t.iter().enumerate() {
                        block[xi][k] = *v;
                    }
                }
                for (xi, b) in block[..xis].iter().enumerate() {
                    // SAFETY: each part writes its own output channels.
                    let dst = unsafe { us.slice((xi * co + o) * ci + c0, n) };
                    dst.copy_from_slice(&b[..n]);
                }
            }
        }
    });
    u
}

/// The weights `conv3x3` takes: `transform_weights` packed into the micro-kernel's panels.
pub fn prepare_weights(var: Variant, w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    micro::pack(&transform_weights(var, w, co, ci), var.xis(), co, ci)
}

/// Weights for the input gradient: `w'[c][o] = w[o][c]` rotated by 180°.
pub fn flip_weights(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut f = vec![0f32; w.len()];
    for o in 0..co {
        for c in 0..ci {
            for k in 0..9 {
                f[(c * co + o) * 9 + (8 - k)] = w[(o * ci + c) * 9 + k];
            }
        }
    }
    f
}

/// dW `[co, ci, 3, 3]` from the Winograd-domain gradient dU `[ξ][o][c]`, read 16 input
/// channels at a time (the planes alias in the caches as in `transform_weights`).
fn weight_grads(var: Variant, du: &[f32], co: usize, ci: usize) -> Vec<f32> {
    const CB: usize = 16;
    let xis = var.xis();
    let mut dw = uninit_vec(co * ci * 9);
    let mut block = [[0f32; CB]; 36];
    let mut d = [0f32; 36];
    for o in 0..co {
        for c0 in (0..ci).step_by(CB) {
            let n = CB.min(ci - c0);
            for (xi, b) in block[..xis].iter_mut().enumerate() {
                b[..n].copy_from_slice(&du[(xi * co + o) * ci + c0..][..n]);
            }
            for k in 0..n {
                for (xi, v) in d[..xis].iter_mut().enumerate() {
                    *v = block[xi][k];
                }
                let g = match var {
                    Variant::F2 => f2::weight_grad(&d[..16]),
                    Variant::F4 => f4::weight_grad(&d),
                };
                dw[(o * ci + c0 + k) * 9..][..9].copy_from_slice(&g);
            }
        }
    }
    dw
}

#[inline(always)]
fn input(var: Variant, x: &[f32], d: &Dims, cs: Range<usize>, v: &Shared, p: Planes, col0: usize) {
    match var {
        Variant::F2 => f2::input(x, d, cs, v, p, col0),
        Variant::F4 => f4::input(x, d, cs, v, p, col0),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output(
    var: Variant,
    m: &[f32],
    d: &Dims,
    os: Range<usize>,
    p: Planes,
    col0: usize,
    bias: Option<&[f32]>,
    y: &Shared,
    y0: usize,
) {
    match var {
        Variant::F2 => f2::output(m, d, os, p, col0, bias, y, y0),
        Variant::F4 => f4::output(m, d, os, p, col0, bias, y, y0),
    }
}

/// Whether a layer's tile rows are narrower than the lanes (16 px and less for F(4×4)): its
/// transforms then take all of a group's images at once (`*_narrow`), one channel at a time.
fn narrow(d: &Dims) -> bool {
    d.tw < L
}

use f4::{input_narrow, output_narrow};
crate::kernels::multiversion!(
    input_narrow,
    input_group_mv,
    fn(x: &[f32], nb: usize, d: &Dims, cs: Range<usize>, v: &Shared, p: Planes)
);
crate::kernels::multiversion!(
    output_narrow,
    output_group_mv,
    fn(
        m: &[f32],
        nb: usize,
        d: &Dims,
        os: Range<usize>,
        p: Planes,
        bias: Option<&[f32]>,
        n0: usize,
        y: &Shared,
    )
);
crate::kernels::multiversion!(
    input,
    input_mv,
    fn(var: Variant, x: &[f32], d: &Dims, cs: Range<usize>, v: &Shared, p: Planes, col0: usize)
);
crate::kernels::multiversion!(
    output,
    output_mv,
    fn(
        var: Variant,
        m: &[f32],
        d: &Dims,
        os: Range<usize>,
        p: Planes,
        col0: usize,
        bias: Option<&[f32]>,
        y: &Shared,
        y0: usize,
    )
);
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn micro_gemm(
    panels: &[f32],
    co: usize,
    ci: usize,
    v: &[f32],
    ld: usize,
    cols: Range<usize>,
    m: &Shared,
    m0: usize,
) {
    micro::gemm(panels, co, ci, v, ld, cols, m, m0)
}

crate::kernels::multiversion!(
    micro_gemm,
    gemm_mv,
    fn(
        panels: &[f32],
        co: usize,
        ci: usize,
        v: &[f32],
        ld: usize,
        cols: Range<usize>,
        m: &Shared,
        m0: usize,
    )
);
/// Columns (tiles) each group's GEMMs aim for: 64 keeps a group's V and M in L2 for 64
/// channels (F(4×4): 36 · 64 · 64 floats = 590 kB each), measured 1.2–2× faster than 256 at
/// batch 32 (`examples/conv_algos.rs`).
const TARGET_COLS: usize = 64;

/// How a batch of `b` images with `t` tiles each is cut: images per group, group count, and
/// whether groups run in parallel (else each group splits its own work over the threads).
fn grouping(b: usize, t: usize, threads: usize) -> (usize, usize, bool) {
    let per_group = TARGET_COLS.div_ceil(t).clamp(1, b.max(1));
    // Keep at least one group per thread when the batch allows it.
    let per_group = per_group.min(b.div_ceil(threads).max(1));
    let groups = b.div_ceil(per_group);
    (per_group, groups, groups >= threads && threads > 1)
}

/// Runs `f` on `parts` near-equal ranges of `0..n`, in parallel when `parts > 1`.
fn split(n: usize, parts: usize, f: impl Fn(Range<usize>) + Sync) {
    if parts <= 1 || n <= 1 {
        f(0..n);
    } else {
        super::split_range(n, parts).into_par_iter().for_each(&f);
    }
}

/// Runs `f(image, channels)` over the items `i·per + c` of `r`, one call per image touched.
fn per_image(r: Range<usize>, per: usize, mut f: impl FnMut(usize, Range<usize>)) {
    let mut k = r.start;
    while k < r.end {
        let (i, c) = (k / per, k % per);
        let end = (per - c).min(r.end - k) + c;
        f(i, c..end);
        k += end - c;
    }
}

/// V of images `n0 .. n0 + nb` of x (each `inl` long, `t` tiles) into `vs` (`ld` columns),
/// channels split over `parts` threads.
#[allow(clippy::too_many_arguments)]
fn transform_inputs(
    var: Variant,
    x: &[f32],
    d: &Dims,
    (n0, nb): (usize, usize),
    (inl, t): (usize, usize),
    vs: &Shared,
    p: Planes,
    parts: usize,
) {
    if var == Variant::F4 && narrow(d) {
        let xg = &x[n0 * inl..(n0 + nb) * inl];
        return split(d.ci, parts, |cs| input_group_mv(xg, nb, d, cs, vs, p));
    }
    split(nb * d.ci, parts, |r| {
        per_image(r, d.ci, |i, cs| {
            let xi = &x[(n0 + i) * inl..(n0 + i + 1) * inl];
            input_mv(var, xi, d, cs, vs, p, i * t)
        })
    });
}

/// 3×3, stride 1, padding 1 convolution of x `[b, ci, h, w]` with prepared weights
/// `u = prepare_weights(var, w)`, plus `bias` (`[co]` or per image `[b, co]`): returns
/// `[b, co, h, w]`.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
    var: Variant,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    threads: usize,
) -> Vec<f32> {
    let d = Dims::new(var, ci, co, h, w);
    let xis = var.xis();
    assert_eq!(x.len(), b * ci * h * w);
    let panel_len = co.div_ceil(micro::MR) * ci * micro::MR;
    assert_eq!(u.len(), xis * panel_len);
    let (t, inl, outl) = (d.tiles(), ci * h * w, co * h * w);
    let (per_group, _, outer) = grouping(b, t, threads);
    let inner = if outer { 1 } else { threads };
    let mut y = uninit_vec(b * outl);
    let group = |g: usize, yg: &mut [f32]| {
        let n0 = g * per_group;
        let nb = yg.len() / outl;
        let ld = nb * t;
        let (vp, mp) = (Planes::new(ci, ld), Planes::new(co, ld));
        let ys = Shared::new(yg);
        super::with_scratch(&V, vp.len(xis), |v| {
            let vs = Shared::new(v);
            transform_inputs(var, x, &d, (n0, nb), (inl, t), &vs, vp, inner);
            // SAFETY: the transforms above are done; from here V is only read.
            let v = unsafe { vs.slice(0, vp.len(xis)) };
            super::with_scratch(&M, mp.len(xis), |m| {
                mp.zero_pads(m, xis);
                let ms = Shared::new(m);
                split(xis, inner, |r| {
                    for xi in r {
                        let panels = &u[xi * panel_len..][..panel_len];
                        let vx = &v[vp.at(xi, 0, 0)..][..ci * ld];
                        gemm_mv(panels, co, ci, vx, ld, 0..ld, &ms, mp.at(xi, 0, 0));
                    }
                });
                // SAFETY: the GEMMs are done; from here M is only read.
                let m = unsafe { ms.slice(0, mp.len(xis)) };
                if var == Variant::F4 && narrow(&d) {
                    return split(co, inner, |os| {
                        output_group_mv(m, nb, &d, os, mp, bias, n0, &ys)
                    });
                }
                split(nb * co, inner, |r| {
                    per_image(r, co, |i, os| {
                        let bias = bias.map(|b| super::conv2d::image_bias(b, n0 + i, co));
                        output_mv(var, m, &d, os, mp, i * t, bias, &ys, i * outl)
                    })
                });
            });
        });
    };
    if outer {
        y.par_chunks_mut(per_group * outl)
            .enumerate()
            .for_each(|(g, yg)| group(g, yg));
    } else {
        y.chunks_mut(per_group * outl)
            .enumerate()
            .for_each(|(g, yg)| group(g, yg));
    }
    y
}

/// The weight gradient `[co, ci, 3, 3]` of a 3×3, stride 1, padding 1 convolution of x
/// `[b, ci, h, w]` with output gradient dy `[b, co, h, w]`: the forward's adjoint in the
/// Winograd domain (exact up to rounding, like the forward).
#[allow(clippy::too_many_arguments)]
pub fn grad_weight(
    var: Variant,
    x: &[f32],
    dy: &[f32],
    b: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    threads: usize,
) -> Vec<f32> {
    let d = Dims::new(var, ci, co, h, w);
    let xis = var.xis();
    assert_eq!(x.len(), b * ci * h * w);
    assert_eq!(dy.len(), b * co * h * w);
    let (t, inl, outl) = (d.tiles(), ci * h * w, co * h * w);
    let (per_group, groups, outer) = grouping(b, t, threads);
    let inner = if outer { 1 } else { threads };
    // dU[ξ] (co × ci) += dM[ξ] (co × ld) · V[ξ]ᵀ (ld × ci), for one group of images.
    let group = |g: usize, du: &mut [f32], acc: bool| {
        let n0 = g * per_group;
        let nb = per_group.min(b - n0);
        if var == Variant::F4 && dw::applies(ci, co) {
            return dw::group(x, dy, &d, (n0, nb), du, acc, inner);
        }
        let ld = nb * t;
        let (vp, mp) = (Planes::new(ci, ld), Planes::new(co, ld));
        super::with_scratch(&V, vp.len(xis), |v| {
            let vs = Shared::new(v);
            transform_inputs(var, x, &d, (n0, nb), (inl, t), &vs, vp, inner);
            super::with_scratch(&M, mp.len(xis), |m| {
                let ms = Shared::new(m);
                if narrow(&d) {
                    let dyg = &dy[n0 * outl..(n0 + nb) * outl];
                    split(co, inner, |os| {
                        output_grad_group_mv(var, dyg, nb, &d, os, &ms, mp)
                    });
                } else {
                    split(nb * co, inner, |r| {
                        per_image(r, co, |i, os| {
                            let dyi = &dy[(n0 + i) * outl..(n0 + i + 1) * outl];
                            output_grad_mv(var, dyi, &d, os, &ms, mp, i * t)
                        })
                    });
                }
                // SAFETY: the transforms are done; from here V and dM are only read.
                let (v, m) = unsafe { (vs.slice(0, vp.len(xis)), ms.slice(0, mp.len(xis))) };
                let dus = Shared::new(du);
                split(xis, inner, |r| {
                    for xi in r {
                        let lhs = Mat::rows(&m[mp.at(xi, 0, 0)..], ld);
                        let rhs = Mat::transposed(&v[vp.at(xi, 0, 0)..], ld);
                        // SAFETY: each ξ writes its own co × ci block of dU.
                        let dst = unsafe { dus.slice(xi * co * ci, co * ci) };
                        matmul(dst, co, ci, ld, lhs, rhs, acc, Parallelism::None);
                    }
                });
            });
        });
    };
    let du = if outer {
        // One dU per thread, over a contiguous run of groups (its first group writes, the
        // rest add), then summed: a fold with a zeroed dU per rayon split cost a 2.4 MB
        // memset and an add pass per split at 128 channels.
        let parts: Vec<Vec<f32>> = super::split_range(groups, threads)
            .into_par_iter()
            .map(|r| {
                let mut du = uninit_vec(xis * co * ci);
                for (i, g) in r.enumerate() {
                    group(g, &mut du, i > 0);
                }
                du
            })
            .collect();
        let mut parts = parts.into_iter();
        let mut du = parts.next().expect("at least one group");
        for p in parts {
            du.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
        }
        du
    } else {
        let mut du = uninit_vec(xis * co * ci);
        for g in 0..groups {
            group(g, &mut du, g > 0);
        }
        du
    };
    weight_grads(var, &du, co, ci)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{max_rel, rand_tensor};
    use candle_core::{Device, Tensor};

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// (b, ci, co, h, w): odd sizes, 1×1 and 2×1 images, batches split into several groups,
    /// images narrower than a lane batch of tiles and wider than several.
    const CASES: [(usize, usize, usize, usize, usize); 7] = [
        (2, 3, 4, 8, 8),
        (7, 5, 6, 5, 7),
        (3, 2, 3, 1, 1),
        (4, 3, 2, 2, 1),
        (9, 8, 16, 6, 6),
        (1, 16, 8, 33, 17),
        (2, 4, 5, 9, 70),
    ];

    #[test]
    fn matches_direct_convolution_on_odd_sizes_batches_and_thread_counts() {
        for var in [Variant::F2, Variant::F4] {
            for (i, &(b, ci, co, h, w)) in CASES.iter().enumerate() {
                let x = rand_tensor(&[b, ci, h, w], i as u64);
                let wt = rand_tensor(&[co, ci, 3, 3], 50 + i as u64);
                let bias = rand_tensor(&[co], 90 + i as u64);
                let want = x
                    .conv2d(&wt, 1, 1, 1, 1)
                    .unwrap()
                    .broadcast_add(&bias.reshape((1, co, 1, 1)).unwrap())
                    .unwrap();
                let u = prepare_weights(var, &vec(&wt), co, ci);
                for threads in [1, 2, 3] {
                    let y = conv3x3(
                        var,
                        &vec(&x),
                        &u,
                        Some(&vec(&bias)),
                        b,
                        ci,
                        co,
                        h,
                        w,
                        threads,
                    );
                    let got = Tensor::from_vec(y, (b, co, h, w), &Device::Cpu).unwrap();
                    let e = max_rel(&got, &want);
                    assert!(e < 1e-5, "{var:?} case {i} threads {threads}: {e}");
                }
            }
        }
    }

    #[test]
    fn per_image_bias_reaches_every_group() {
        // 5 images in groups of 3 and 2 (2 threads): the second group starts at image 3.
        let (b, ci, co, h, w) = (5, 3, 4, 8, 6);
        let x = rand_tensor(&[b, ci, h, w], 1);
        let wt = rand_tensor(&[co, ci, 3, 3], 2);
        let bias = rand_tensor(&[b, co], 3);
        let want = x
            .conv2d(&wt, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((b, co, 1, 1)).unwrap())
            .unwrap();
        for var in [Variant::F2, Variant::F4] {
            let u = prepare_weights(var, &vec(&wt), co, ci);
            let y = conv3x3(var, &vec(&x), &u, Some(&vec(&bias)), b, ci, co, h, w, 2);
            let got = Tensor::from_vec(y, (b, co, h, w), &Device::Cpu).unwrap();
            assert!(max_rel(&got, &want) < 1e-5, "{var:?}");
        }
    }

    #[test]
    fn flipped_weights_give_the_input_gradient() {
        // <conv(x, w), dy> = <x, conv(dy, flip(w))> for stride 1, padding 1.
        let (b, ci, co, h, w) = (2, 3, 5, 6, 7);
        let x = vec(&rand_tensor(&[b, ci, h, w], 1));
        let wt = vec(&rand_tensor(&[co, ci, 3, 3], 2));
        let dy = vec(&rand_tensor(&[b, co, h, w], 3));
        for var in [Variant::F2, Variant::F4] {
            let y = conv3x3(
                var,
                &x,
                &prepare_weights(var, &wt, co, ci),
                None,
                b,
                ci,
                co,
                h,
                w,
                1,
            );
            let flipped = prepare_weights(var, &flip_weights(&wt, co, ci), ci, co);
            let dx = conv3x3(var, &dy, &flipped, None, b, co, ci, h, w, 2);
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{var:?}: {lhs} vs {rhs}"
            );
        }
    }

    /// `grad_weight` against candle's autograd on each case, at 1, 2 and 3 threads.
    fn check_weight_gradient(var: Variant, cases: &[(usize, usize, usize, usize, usize)]) {
        for (i, &(b, ci, co, h, w)) in cases.iter().enumerate() {
            let x = rand_tensor(&[b, ci, h, w], i as u64);
            let wt = candle_core::Var::from_tensor(&rand_tensor(&[co, ci, 3, 3], 7)).unwrap();
            let dy = rand_tensor(&[b, co, h, w], 30 + i as u64);
            let loss = (x.conv2d(&wt, 1, 1, 1, 1).unwrap() * &dy).unwrap();
            let grads = loss.sum_all().unwrap().backward().unwrap();
            let want = grads.get(&wt).unwrap();
            for threads in [1, 2, 3] {
                let dw = grad_weight(var, &vec(&x), &vec(&dy), b, ci, co, h, w, threads);
                let got = Tensor::from_vec(dw, (co, ci, 3, 3), &Device::Cpu).unwrap();
                let e = max_rel(&got, want);
                assert!(e < 1e-5, "{var:?} case {i} threads {threads}: {e}");
            }
        }
    }

    #[test]
    fn weight_gradient_matches_candle() {
        for var in [Variant::F2, Variant::F4] {
            check_weight_gradient(var, &CASES);
        }
    }

    #[test]
    fn channels_last_weight_gradient_matches_candle() {
        // `dw`'s path: channel counts multiples of 8, with a partial 6-row and 16-column
        // block (40 and 24), odd sizes, several groups per thread.
        let cases = [(5, 24, 40, 11, 13), (3, 64, 8, 4, 4), (34, 8, 8, 3, 5)];
        assert!(cases.iter().all(|&(_, ci, co, _, _)| dw::applies(ci, co)));
        check_weight_gradient(Variant::F4, &cases);
    }

    #[test]
    fn transforms_invert_on_single_filters() {
        // Gᵀ (G g Gᵀ) G is not g, but the weight-gradient transform is the adjoint of the
        // weight transform: <transform(g), d> = <g, grad_transform(d)>.
        let g = vec(&rand_tensor(&[9], 1));
        for var in [Variant::F2, Variant::F4] {
            let n = var.xis();
            let d = vec(&rand_tensor(&[n], 2));
            let u = transform_weights(var, &g, 1, 1);
            let back = weight_grads(var, &d, 1, 1);
            let lhs: f64 = u.iter().zip(&d).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = g
                .iter()
                .zip(&back)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0),
                "{var:?}: {lhs} vs {rhs}"
            );
        }
    }
}

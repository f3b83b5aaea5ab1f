//! Winograd F(2×2, 3×3) for stride-1, padding-1 3×3 convolutions (Lavin & Gray 2016, "Fast
//! Algorithms for Convolutional Neural Networks"): each 2×2 output tile costs 16 multiplies
//! per (in, out) channel pair instead of 36, so the GEMM work is 2.25× smaller than im2col's.
//! Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, with the ⊙ over input channels done as 16 GEMMs
//! `M[ξ] (co × tiles) = U[ξ] (co × ci) · V[ξ] (ci × tiles)`. Images are grouped so that every
//! GEMM has at least ~512 columns; groups run on separate threads. The same routine computes
//! the input gradient: dX = conv(dY, W rotated by 180° with in/out swapped).

use super::uninit_vec;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    static V: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static M: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `U[ξ][o][c] = (G g Gᵀ)[ξ]` for w `[co, ci, 3, 3]`.
pub fn transform_weights(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * co * ci];
    for o in 0..co {
        for c in 0..ci {
            let g = &w[(o * ci + c) * 9..][..9];
            // t = G g: [4, 3]
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            for (i, ti) in t.iter().enumerate() {
                let (a, b, cc) = (ti[0], ti[1], ti[2]);
                let row = [a, 0.5 * (a + b + cc), 0.5 * (a - b + cc), cc];
                for (j, v) in row.iter().enumerate() {
                    u[((i * 4 + j) * co + o) * ci + c] = *v;
                }
            }
        }
    }
    u
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
    fn tiles(&self) -> usize {
        self.th * self.tw
    }
}

/// V[ξ][c][col0 + t] = (Bᵀ d B)[ξ] for each 4×4 input patch d of image `x` (one image).
/// Row by row of tiles: the 4 input rows are split into the padded row's even and odd
/// columns (tile `tx` reads even[tx], odd[tx], even[tx+1], odd[tx+1]), Bᵀ runs over whole
/// rows and B over tiles — every loop contiguous, so they vectorize.
#[inline(always)]
fn input_transform(x: &[f32], d: &Dims, v: &mut [f32], ld: usize, col0: usize) {
    let tw = d.tw;
    let n = tw + 1;
    // [row 0..4][even | odd] of the zero-padded row (padded index j holds x[j − 1]).
    let mut rows = vec![0f32; 8 * n];
    let mut q = vec![0f32; 8 * n];
    for c in 0..d.ci {
        let xc = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ty in 0..d.th {
            for (i, r) in rows.chunks_exact_mut(2 * n).enumerate() {
                let yy = (2 * ty + i) as isize - 1;
                r.fill(0.0);
                if yy < 0 || yy >= d.h as isize {
                    continue;
                }
                let xr = &xc[yy as usize * d.w..][..d.w];
                let (even, odd) = r.split_at_mut(n);
                // padded 2k + 1 = x[2k] → odd[k]; padded 2k + 2 = x[2k + 1] → even[k + 1]
                let pairs = xr.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    odd[d.w / 2] = *last;
                }
                for ((o, e), pair) in odd.iter_mut().zip(&mut even[1..]).zip(pairs) {
                    *o = pair[0];
                    *e = pair[1];
                }
            }
            // Bᵀ over the 4 rows (both halves at once).
            let (r0, rest) = rows.split_at(2 * n);
            let (r1, rest) = rest.split_at(2 * n);
            let (r2, r3) = rest.split_at(2 * n);
            let (q0, rest) = q.split_at_mut(2 * n);
            let (q1, rest) = rest.split_at_mut(2 * n);
            let (q2, q3) = rest.split_at_mut(2 * n);
            for k in 0..2 * n {
                q0[k] = r0[k] - r2[k];
                q1[k] = r1[k] + r2[k];
                q2[k] = r2[k] - r1[k];
                q3[k] = r1[k] - r3[k];
            }
            let t0 = col0 + ty * tw;
            let stride = d.ci * ld;
            for (i, qi) in [&*q0, &*q1, &*q2, &*q3].into_iter().enumerate() {
                let (e, o) = qi.split_at(n);
                let (a, b, cc, dd) = (&e[..tw], &o[..tw], &e[1..n], &o[1..n]);
                let base = (i * 4 * d.ci + c) * ld + t0;
                let (v0, rest) = v[base..].split_at_mut(stride);
                let (v1, rest) = rest.split_at_mut(stride);
                let (v2, v3) = rest.split_at_mut(stride);
                let (v0, v1, v2, v3) = (&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
                for tx in 0..tw {
                    v0[tx] = a[tx] - cc[tx];
                    v1[tx] = b[tx] + cc[tx];
                    v2[tx] = cc[tx] - b[tx];
                    v3[tx] = b[tx] - dd[tx];
                }
            }
        }
    }
}

/// y[o][2ty + i][2tx + j] = (Aᵀ m A)[i][j] + bias[o] for one image, a row of tiles at a time.
#[inline(always)]
fn output_transform(
    m: &[f32],
    d: &Dims,
    ld: usize,
    col0: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let tw = d.tw;
    let mut r = vec![0f32; 8 * tw]; // r[i][j][tx]: Aᵀ over the 4 tile rows
    let mut out = vec![0f32; 2 * tw];
    for o in 0..d.co {
        let yo = &mut y[o * d.h * d.w..(o + 1) * d.h * d.w];
        let b = bias.map_or(0.0, |b| b[o]);
        for ty in 0..d.th {
            let t0 = col0 + ty * tw;
            let row = |xi: usize| &m[(xi * d.co + o) * ld + t0..][..tw];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (row(j), row(4 + j), row(8 + j), row(12 + j));
                let (ra, rb) = r.split_at_mut(4 * tw);
                let (ra, rb) = (&mut ra[j * tw..(j + 1) * tw], &mut rb[j * tw..(j + 1) * tw]);
                for tx in 0..tw {
                    ra[tx] = m0[tx] + m1[tx] + m2[tx];
                    rb[tx] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            for i in 0..2 {
                let yy = 2 * ty + i;
                if yy >= d.h {
                    continue;
                }
                let ri = &r[i * 4 * tw..(i + 1) * 4 * tw];
                let (a0, a1, a2, a3) = (
                    &ri[..tw],
                    &ri[tw..2 * tw],
                    &ri[2 * tw..3 * tw],
                    &ri[3 * tw..],
                );
                for tx in 0..tw {
                    out[2 * tx] = a0[tx] + a1[tx] + a2[tx] + b;
                    out[2 * tx + 1] = a1[tx] - a2[tx] - a3[tx] + b;
                }
                yo[yy * d.w..(yy + 1) * d.w].copy_from_slice(&out[..d.w]);
            }
        }
    }
}

crate::kernels::multiversion!(
    input_transform,
    input_transform_mv,
    fn(x: &[f32], d: &Dims, v: &mut [f32], ld: usize, col0: usize)
);
crate::kernels::multiversion!(
    output_transform,
    output_transform_mv,
    fn(m: &[f32], d: &Dims, ld: usize, col0: usize, bias: Option<&[f32]>, y: &mut [f32])
);

/// Columns each group's GEMMs aim for.
const TARGET_COLS: usize = 256;

/// 3×3, stride 1, padding 1 convolution of x `[b, ci, h, w]` with pre-transformed weights
/// `u = transform_weights(w)`, plus `bias` (`[co]` or per image `[b, co]`): returns
/// `[b, co, h, w]`.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
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
    let d = Dims {
        ci,
        co,
        h,
        w,
        th: h.div_ceil(2),
        tw: w.div_ceil(2),
    };
    assert_eq!(x.len(), b * ci * h * w);
    assert_eq!(u.len(), 16 * co * ci);
    let (t, inl, outl) = (d.tiles(), ci * h * w, co * h * w);
    let per_group = TARGET_COLS.div_ceil(t).clamp(1, b.max(1));
    // Keep at least one group per thread when the batch allows it.
    let per_group = per_group.min(b.div_ceil(threads).max(1));
    let mut y = uninit_vec(b * outl);
    let group = |g: usize, yg: &mut [f32], par: Parallelism| {
        let n0 = g * per_group;
        let nb = yg.len() / outl;
        let ld = nb * t;
        super::with_scratch(&V, 16 * ci * ld, |v| {
            for i in 0..nb {
                input_transform_mv(&x[(n0 + i) * inl..(n0 + i + 1) * inl], &d, v, ld, i * t);
            }
            super::with_scratch(&M, 16 * co * ld, |m| {
                for xi in 0..16 {
                    // SAFETY: u[ξ] is co×ci, v[ξ] ci×ld and m[ξ] co×ld, all row-major in bounds.
                    unsafe {
                        gemm::gemm(
                            co,
                            ld,
                            ci,
                            m[xi * co * ld..].as_mut_ptr(),
                            1,
                            ld as isize,
                            false,
                            u[xi * co * ci..].as_ptr(),
                            1,
                            ci as isize,
                            v[xi * ci * ld..].as_ptr(),
                            1,
                            ld as isize,
                            0.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            par,
                        )
                    }
                }
                for i in 0..nb {
                    let bias = bias.map(|b| super::conv2d::image_bias(b, n0 + i, co));
                    output_transform_mv(m, &d, ld, i * t, bias, &mut yg[i * outl..(i + 1) * outl]);
                }
            });
        });
    };
    let groups = b.div_ceil(per_group);
    if groups >= threads && threads > 1 {
        y.par_chunks_mut(per_group * outl)
            .enumerate()
            .for_each(|(g, yg)| group(g, yg, Parallelism::None));
    } else {
        let par = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        y.chunks_mut(per_group * outl)
            .enumerate()
            .for_each(|(g, yg)| group(g, yg, par));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{max_rel, rand_tensor};
    use candle_core::Tensor;

    #[test]
    fn matches_direct_convolution_on_odd_sizes_batches_and_thread_counts() {
        // (b, ci, co, h, w): odd sizes, 1×1 and 2×1 images, batches split into several groups.
        let cases = [
            (2, 3, 4, 8, 8),
            (7, 5, 6, 5, 7),
            (3, 2, 3, 1, 1),
            (4, 3, 2, 2, 1),
            (9, 8, 16, 6, 6),
            (1, 16, 8, 33, 17),
        ];
        for (i, &(b, ci, co, h, w)) in cases.iter().enumerate() {
            let x = rand_tensor(&[b, ci, h, w], i as u64);
            let wt = rand_tensor(&[co, ci, 3, 3], 50 + i as u64);
            let bias = rand_tensor(&[co], 90 + i as u64);
            let want = x
                .conv2d(&wt, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, co, 1, 1)).unwrap())
                .unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bs = bias.to_vec1::<f32>().unwrap();
            let u = transform_weights(&ws, co, ci);
            for threads in [1, 2, 3] {
                let y = conv3x3(&xs, &u, Some(&bs), b, ci, co, h, w, threads);
                let got = Tensor::from_vec(y, (b, co, h, w), &candle_core::Device::Cpu).unwrap();
                let e = max_rel(&got, &want);
                assert!(e < 1e-5, "case {i} threads {threads}: {e}");
            }
        }
    }

    #[test]
    fn flipped_weights_give_the_input_gradient() {
        // <conv(x, w), dy> = <x, conv(dy, flip(w))> for stride 1, padding 1.
        let (b, ci, co, h, w) = (2, 3, 5, 6, 7);
        let x = rand_tensor(&[b, ci, h, w], 1)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let wt = rand_tensor(&[co, ci, 3, 3], 2)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dy = rand_tensor(&[b, co, h, w], 3)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let y = conv3x3(
            &x,
            &transform_weights(&wt, co, ci),
            None,
            b,
            ci,
            co,
            h,
            w,
            1,
        );
        let flipped = transform_weights(&flip_weights(&wt, co, ci), ci, co);
        let dx = conv3x3(&dy, &flipped, None, b, co, ci, h, w, 2);
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!(
            (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}

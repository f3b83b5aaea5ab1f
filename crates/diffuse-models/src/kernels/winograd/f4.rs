//! Winograd F(4×4, 3×3) (Lavin & Gray 2016, §4; interpolation points 0, ±1, ±2, ∞, the
//! matrices NNPACK and oneDNN use): each 4×4 output tile costs 36 multiplies per channel pair
//! instead of 144, 4× fewer than direct convolution and 1.78× fewer than F(2×2, 3×3), at a
//! larger rounding error (the transforms scale by up to 8 and divide by 24).
//!
//! Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1]
//! G  = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙; 1⁄24 1⁄12 ⅙; 1⁄24 −1⁄12 ⅙; 0 0 1]
//! Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]
//!
//! The transforms run on 8 tiles at once (`Lanes`): each tile row is split into its four
//! column phases first, so every lane load is a contiguous slice and the loops vectorize.
//! Rows of fewer than 8 tiles (16 px and narrower) would leave lanes empty; there the
//! `_narrow` transforms take the tiles of all of a group's images together, one channel at a
//! time, since V's and M's columns run over the group's images.

use super::lanes::{padded_row, phases, put, Lanes, Patches, Planes, Shared, L};
use super::Dims;
use crate::kernels::conv2d::image_bias;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Bᵀ applied to six lane vectors.
#[inline(always)]
fn bt(d: [&Lanes; 6]) -> [Lanes; 6] {
    let mut r = [[0f32; L]; 6];
    for l in 0..L {
        let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = d3 + d4 - 4.0 * (d1 + d2);
        r[2][l] = d4 - d3 + 4.0 * (d1 - d2);
        r[3][l] = d4 - d2 + 2.0 * (d3 - d1);
        r[4][l] = d4 - d2 + 2.0 * (d1 - d3);
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// Aᵀ applied to six lane vectors.
#[inline(always)]
fn at(m: [&Lanes; 6]) -> [Lanes; 4] {
    let mut r = [[0f32; L]; 4];
    for l in 0..L {
        let (a, b) = (m[1][l] + m[2][l], m[1][l] - m[2][l]);
        let (c, d) = (m[3][l] + m[4][l], m[3][l] - m[4][l]);
        r[0][l] = m[0][l] + a + c;
        r[1][l] = b + 2.0 * d;
        r[2][l] = a + 4.0 * c;
        r[3][l] = b + 8.0 * d + m[5][l];
    }
    r
}

/// (Aᵀ)ᵀ = A applied to four lane vectors: the adjoint of `at` (the weight gradient's dY).
#[inline(always)]
pub(super) fn a(y: [&Lanes; 4]) -> [Lanes; 6] {
    let mut r = [[0f32; L]; 6];
    for l in 0..L {
        let (y0, y1, y2, y3) = (y[0][l], y[1][l], y[2][l], y[3][l]);
        let (e, o) = (y0 + y2, y1 + y3);
        let (e4, o8) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
        r[0][l] = y0;
        r[1][l] = e + o;
        r[2][l] = e - o;
        r[3][l] = e4 + o8;
        r[4][l] = e4 - o8;
        r[5][l] = y3;
    }
    r
}

const SIXTH: f32 = 1.0 / 6.0;
const TWELFTH: f32 = 1.0 / 12.0;
const T24TH: f32 = 1.0 / 24.0;

/// G applied to one column (g0, g1, g2) of a filter.
#[inline(always)]
fn g_col(g0: f32, g1: f32, g2: f32) -> [f32; 6] {
    let (s, d) = (g0 + g2, g1);
    [
        0.25 * g0,
        -SIXTH * (s + d),
        -SIXTH * (s - d),
        T24TH * g0 + TWELFTH * g1 + SIXTH * g2,
        T24TH * g0 - TWELFTH * g1 + SIXTH * g2,
        g2,
    ]
}

/// G g Gᵀ for one 3×3 filter, row-major 6×6.
#[inline(always)]
pub fn weight(g: &[f32]) -> [f32; 36] {
    let mut u = [0f32; 36];
    super::filter_transform(g, g_col, &mut u);
    u
}

/// Gᵀ applied to a 6-vector.
#[inline(always)]
fn gt_row(u: &[f32]) -> [f32; 3] {
    let (p, m) = (u[1] + u[2], u[2] - u[1]);
    let (p34, m34) = (u[3] + u[4], u[3] - u[4]);
    [
        0.25 * u[0] - SIXTH * p + T24TH * p34,
        SIXTH * m + TWELFTH * m34,
        SIXTH * (p34 - p) + u[5],
    ]
}

/// Gᵀ d G for one 6×6 Winograd-domain gradient (row-major): the 3×3 filter gradient.
pub fn weight_grad(d: &[f32]) -> [f32; 9] {
    super::filter_grad::<6>(d, gt_row)
}

/// V[ξ][c][t0 .. t0 + n] = (Bᵀ d B)[ξ] for 8 tiles' 6×6 input patches, `lane(i, j)` holding
/// patch element (i, j) of each tile.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) fn input_lanes<'a>(
    lane: impl Fn(usize, usize) -> &'a Lanes,
    v: &Shared,
    p: Planes,
    c: usize,
    t0: usize,
    n: usize,
) {
    // t[k][j] = Σᵢ Bᵀ[k][i] d[i][j]
    let mut t = [[MaybeUninit::<Lanes>::uninit(); 6]; 6];
    for j in 0..6 {
        let col = bt([
            lane(0, j),
            lane(1, j),
            lane(2, j),
            lane(3, j),
            lane(4, j),
            lane(5, j),
        ]);
        for k in 0..6 {
            t[k][j].write(col[k]);
        }
    }
    // SAFETY: every t[k][j] was written above (a zero-filled array was a memset call per
    // 8 tiles).
    // (A reference, not a transmuted copy: that was a 1152-byte memcpy call.)
    let t = unsafe { &*(&t as *const [[MaybeUninit<Lanes>; 6]; 6] as *const [[Lanes; 6]; 6]) };
    for (k, tk) in t.iter().enumerate() {
        let row = bt([&tk[0], &tk[1], &tk[2], &tk[3], &tk[4], &tk[5]]);
        for (m, vals) in row.iter().enumerate() {
            // SAFETY: each caller writes a disjoint range of channels.
            put(unsafe { v.slice(p.at(k * 6 + m, c, t0), n) }, vals);
        }
    }
}

/// V[ξ][c][col0 + t] = (Bᵀ d B)[ξ] for the 6×6 input patch d of every tile t of one image,
/// for the channels `cs`.
#[inline(always)]
pub(super) fn input(x: &[f32], d: &Dims, cs: Range<usize>, v: &Shared, p: Planes, col0: usize) {
    let len = d.tw + 1 + L;
    let mut ph = vec![0f32; 6 * 4 * len]; // [row i][phase p][k]
    for c in cs {
        let xc = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ty in 0..d.th {
            for i in 0..6 {
                let row = padded_row(xc, d, 4 * ty + i, 1);
                phases::<4>(row, 1, d.w, &mut ph[i * 4 * len..(i + 1) * 4 * len], len);
            }
            for tx0 in (0..d.tw).step_by(L) {
                let n = L.min(d.tw - tx0);
                // d[i][j] lanes = padded row i, column 4(tx0 + l) + j
                let lane = |i: usize, j: usize| -> &Lanes {
                    let s = &ph[(i * 4 + j % 4) * len + tx0 + j / 4..][..L];
                    s.try_into().expect("L lanes")
                };
                input_lanes(lane, v, p, c, col0 + ty * d.tw + tx0, n);
            }
        }
    }
}

/// `input` for all tiles of `nb` images (x `[nb, ci, h, w]`) at once, for rows of fewer than
/// L tiles: each channel's 6×6 patches are gathered into `dd[i][j][col]` (col = the tile's
/// column of V) first, so every transform runs on full lanes.
#[inline(always)]
pub(super) fn input_narrow(
    x: &[f32],
    nb: usize,
    d: &Dims,
    cs: Range<usize>,
    v: &Shared,
    p: Planes,
) {
    let ld = nb * d.tiles();
    let mut g = Patches::new(36, ld, d.tw);
    for c in cs {
        g.gather::<4, 6, 6>((x, d.ci, c), nb, d, 1);
        let (dd, ldp) = (&g.dd, g.ldp);
        for t0 in (0..ld).step_by(L) {
            let lane = |i: usize, j: usize| -> &Lanes {
                dd[(i * 6 + j) * ldp + t0..][..L]
                    .try_into()
                    .expect("L lanes")
            };
            input_lanes(lane, v, p, c, t0, L.min(ld - t0));
        }
    }
}

/// The lanes `m[ξ][row][t0 .. t0 + L]` of the 36 ξ, read in place: past a row's end they
/// hold the next row's (or the plane padding's, `PLANE_PAD` ≥ L) values, which no caller
/// writes out.
#[inline(always)]
fn m_lanes<'a>(m: &'a [f32], p: Planes, row: usize, t0: usize) -> impl Fn(usize) -> &'a Lanes {
    move |xi| m[p.at(xi, row, t0)..][..L].try_into().expect("L lanes")
}

/// Aᵀ m A for 8 tiles, `mm(ξ)` holding element ξ of each: `r[k][q]` holds output row k,
/// column q of each tile.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn output_lanes<'a>(mm: impl Fn(usize) -> &'a Lanes) -> [[Lanes; 4]; 4] {
    // s[k][j] = Σᵢ Aᵀ[k][i] m[i][j]
    let mut s = [[MaybeUninit::<Lanes>::uninit(); 6]; 4];
    for j in 0..6 {
        let col = at([
            mm(j),
            mm(6 + j),
            mm(12 + j),
            mm(18 + j),
            mm(24 + j),
            mm(30 + j),
        ]);
        for k in 0..4 {
            s[k][j].write(col[k]);
        }
    }
    // SAFETY: every s[k][j] was written above.
    let s = unsafe { &*(&s as *const [[MaybeUninit<Lanes>; 6]; 4] as *const [[Lanes; 6]; 4]) };
    let mut r = [[[0f32; L]; 4]; 4];
    for (rk, sk) in r.iter_mut().zip(s) {
        *rk = at([&sk[0], &sk[1], &sk[2], &sk[3], &sk[4], &sk[5]]);
    }
    r
}

/// y[o][4ty + i][4tx + j] = (Aᵀ m A)[i][j] + bias[o] for the output channels `os` of one image.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn output(
    m: &[f32],
    d: &Dims,
    os: Range<usize>,
    p: Planes,
    col0: usize,
    bias: Option<&[f32]>,
    y: &Shared,
    y0: usize,
) {
    let hw = d.h * d.w;
    for o in os {
        let b = bias.map_or(0.0, |b| b[o]);
        // SAFETY: each caller writes a disjoint range of output channels.
        let yo = unsafe { y.slice(y0 + o * hw, hw) };
        for ty in 0..d.th {
            for tx0 in (0..d.tw).step_by(L) {
                let n = L.min(d.tw - tx0);
                let r = output_lanes(m_lanes(m, p, o, col0 + ty * d.tw + tx0));
                for (k, rk) in r.iter().enumerate() {
                    let yy = 4 * ty + k;
                    if yy >= d.h {
                        break;
                    }
                    let out = &mut yo[yy * d.w..(yy + 1) * d.w];
                    for l in 0..n {
                        for (q, rq) in rk.iter().enumerate() {
                            let xx = 4 * (tx0 + l) + q;
                            if xx < d.w {
                                out[xx] = rq[l] + b;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `output` for all tiles of the group's `nb` images at once (y `[nb, co, h, w]`), for rows of
/// fewer than L tiles: full lanes of M's columns, each lane's tile then written to its image.
/// The group's first image is image `n0` of the batch (for a per-image `[b, co]` bias).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn output_narrow(
    m: &[f32],
    nb: usize,
    d: &Dims,
    os: Range<usize>,
    p: Planes,
    bias: Option<&[f32]>,
    n0: usize,
    y: &Shared,
) {
    let (t, tw) = (d.tiles(), d.tw);
    let ld = nb * t;
    for o in os {
        for t0 in (0..ld).step_by(L) {
            let n = L.min(ld - t0);
            let r = output_lanes(m_lanes(m, p, o, t0));
            for l in 0..n {
                let (img, tile) = ((t0 + l) / t, (t0 + l) % t);
                let (ty, tx) = (tile / tw, tile % tw);
                let b = bias.map_or(0.0, |b| image_bias(b, n0 + img, d.co)[o]);
                let cols = 4.min(d.w - 4 * tx);
                for (k, rk) in r.iter().enumerate().take(d.h - 4 * ty) {
                    let at = ((img * d.co + o) * d.h + 4 * ty + k) * d.w + 4 * tx;
                    // SAFETY: each caller writes a disjoint range of output channels.
                    let out = unsafe { y.slice(at, cols) };
                    for (q, v) in out.iter_mut().enumerate() {
                        *v = rk[q][l] + b;
                    }
                }
            }
        }
    }
}

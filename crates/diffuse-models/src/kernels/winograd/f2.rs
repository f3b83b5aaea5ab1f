//! Winograd F(2×2, 3×3) (Lavin & Gray 2016, §4): each 2×2 output tile costs 16 multiplies
//! per channel pair instead of 36. Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],
//! G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1], Aᵀ = [1 1 1 0; 0 1 −1 −1]. Its rounding error is the
//! smallest of the tile sizes; it wins on small images, where F(4×4)'s tiles are mostly padding.

use super::lanes::{padded_row, phases, Lanes, Shared, L};
use super::Dims;

/// G applied to one filter column.
#[inline(always)]
fn g_col(a: f32, b: f32, c: f32) -> [f32; 4] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
}

/// G g Gᵀ for one 3×3 filter, row-major 4×4.
pub fn weight(g: &[f32]) -> [f32; 16] {
    let mut u = [0f32; 16];
    super::filter_transform(g, g_col, &mut u);
    u
}

/// Gᵀ d G for one 4×4 Winograd-domain gradient: the 3×3 filter gradient.
pub fn weight_grad(d: &[f32]) -> [f32; 9] {
    super::filter_grad::<4>(d, |u| {
        [
            u[0] + 0.5 * (u[1] + u[2]),
            0.5 * (u[1] - u[2]),
            0.5 * (u[1] + u[2]) + u[3],
        ]
    })
}

/// V[ξ][c][col0 + t] = (Bᵀ d B)[ξ] for each 4×4 input patch d of one image, channels `cs`.
/// Row by row of tiles: the 4 input rows are split into the padded row's even and odd
/// columns (tile `tx` reads even[tx], odd[tx], even[tx+1], odd[tx+1]), Bᵀ runs over whole
/// rows and B over tiles — every loop contiguous, so they vectorize.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) fn input(
    x: &[f32],
    d: &Dims,
    cs: std::ops::Range<usize>,
    v: &Shared,
    p: super::lanes::Planes,
    col0: usize,
) {
    let tw = d.tw;
    let n = tw + 1;
    // [row 0..4][even | odd] of the zero-padded row (padded index j holds x[j − 1]).
    let mut rows = vec![0f32; 8 * n];
    let mut q = vec![0f32; 8 * n];
    for c in cs {
        let xc = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ty in 0..d.th {
            for (i, r) in rows.chunks_exact_mut(2 * n).enumerate() {
                let row = padded_row(xc, d, 2 * ty + i, 1);
                phases::<2>(row, 1, d.w, r, n);
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
            for (i, qi) in [&*q0, &*q1, &*q2, &*q3].into_iter().enumerate() {
                let (e, o) = qi.split_at(n);
                let (a, b, cc, dd) = (&e[..tw], &o[..tw], &e[1..n], &o[1..n]);
                // SAFETY: each caller writes a disjoint range of channels.
                let (v0, v1, v2, v3) = unsafe {
                    let at = |j: usize| v.slice(p.at(i * 4 + j, c, t0), tw);
                    (at(0), at(1), at(2), at(3))
                };
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

/// y[o][2ty + i][2tx + j] = (Aᵀ m A)[i][j] + bias[o] for output channels `os` of one image,
/// a row of tiles at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(super) fn output(
    m: &[f32],
    d: &Dims,
    os: std::ops::Range<usize>,
    p: super::lanes::Planes,
    col0: usize,
    bias: Option<&[f32]>,
    y: &Shared,
    y0: usize,
) {
    let tw = d.tw;
    let mut r = vec![0f32; 8 * tw]; // r[i][j][tx]: Aᵀ over the 4 tile rows
    let mut out = vec![0f32; 2 * tw];
    for o in os {
        // SAFETY: each caller writes a disjoint range of output channels.
        let yo = unsafe { y.slice(y0 + o * d.h * d.w, d.h * d.w) };
        let b = bias.map_or(0.0, |b| b[o]);
        for ty in 0..d.th {
            let t0 = col0 + ty * tw;
            let row = |xi: usize| &m[p.at(xi, o, t0)..][..tw];
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

/// A applied to two lane vectors: (Aᵀ)ᵀ y, the adjoint of the output transform.
#[inline(always)]
pub(super) fn a([y0, y1]: [&Lanes; 2]) -> [Lanes; 4] {
    let mut r = [[0f32; L]; 4];
    for l in 0..L {
        r[0][l] = y0[l];
        r[1][l] = y0[l] + y1[l];
        r[2][l] = y0[l] - y1[l];
        r[3][l] = -y1[l];
    }
    r
}

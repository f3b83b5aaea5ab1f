//! The weight gradient's output-gradient transform dM[ξ] = (A dY Aᵀ)[ξ] (A the adjoint of the
//! forward's output transform), on 8 tiles of a row at a time or, for rows of fewer tiles, on a
//! channel's tiles across the group's images. The channels-last F(4×4) path (`dw`) uses
//! `output_grad_lanes` on 8 channels of a tile.

use super::lanes::{padded_row, phases, put, Lanes, Patches, Planes, Shared, L};
use super::{f2, f4, Dims, Variant};
use std::ops::Range;

/// dM[ξ][o][t0 .. t0 + n] = (A dY Aᵀ)[ξ] for 8 tiles of the output gradient, `lane(k, q)`
/// holding tile element (k, q) of each, given A (the output transform's adjoint) on M lane
/// vectors: A runs along the rows, then down the columns.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(super) fn output_grad_lanes<'a, const M: usize, const A: usize>(
    a: impl Fn([&Lanes; M]) -> [Lanes; A],
    lane: impl Fn(usize, usize) -> &'a Lanes,
    dm: &Shared,
    p: Planes,
    o: usize,
    t0: usize,
    n: usize,
) {
    // z[k][j] = Σ_q dY[k][q] Aᵀ[q][j]
    let z: [[Lanes; A]; M] = std::array::from_fn(|k| a(std::array::from_fn(|q| lane(k, q))));
    for j in 0..A {
        let col = a(std::array::from_fn(|k| &z[k][j]));
        for (i, vals) in col.iter().enumerate() {
            // SAFETY: each caller writes a disjoint range of output channels.
            put(unsafe { dm.slice(p.at(i * A + j, o, t0), n) }, vals);
        }
    }
}

/// dM[ξ][o][col0 + t] = (A dY Aᵀ)[ξ] for every M×M tile t of one image's output gradient, for
/// the output channels `os` (tiles past the image's edge read zeros): each tile row is split
/// into its M column phases, then `output_grad_lanes` runs on 8 tiles at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_grad_tiles<const M: usize, const A: usize>(
    a: impl Fn([&Lanes; M]) -> [Lanes; A] + Copy,
    dy: &[f32],
    d: &Dims,
    os: Range<usize>,
    dm: &Shared,
    p: Planes,
    col0: usize,
) {
    let len = d.tw + L;
    let mut ph = vec![0f32; M * M * len]; // [row k][phase q][tile]
    for o in os {
        let yo = &dy[o * d.h * d.w..(o + 1) * d.h * d.w];
        for ty in 0..d.th {
            for k in 0..M {
                let row = padded_row(yo, d, M * ty + k, 0);
                phases::<M>(row, 0, d.w, &mut ph[k * M * len..(k + 1) * M * len], len);
            }
            for tx0 in (0..d.tw).step_by(L) {
                let lane = |k: usize, q: usize| -> &Lanes {
                    ph[(k * M + q) * len + tx0..][..L]
                        .try_into()
                        .expect("L lanes")
                };
                let t0 = col0 + ty * d.tw + tx0;
                output_grad_lanes(a, lane, dm, p, o, t0, L.min(d.tw - tx0));
            }
        }
    }
}

/// `output_grad_tiles` for all tiles of `nb` images at once (dy `[nb, co, h, w]`), for rows of
/// fewer than L tiles: each channel's M×M tiles are gathered into `dd[k][q][col]` (col = the
/// tile's column of dM) first, so A runs on full lanes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_grad_narrow<const M: usize, const A: usize>(
    a: impl Fn([&Lanes; M]) -> [Lanes; A] + Copy,
    dy: &[f32],
    nb: usize,
    d: &Dims,
    os: Range<usize>,
    dm: &Shared,
    p: Planes,
) {
    let ld = nb * d.tiles();
    let mut g = Patches::new(M * M, ld, d.tw);
    for o in os {
        g.gather::<M, M, M>((dy, d.co, o), nb, d, 0);
        let dd = &g.dd;
        let ldp = g.ldp;
        for t0 in (0..ld).step_by(L) {
            let lane = |k: usize, q: usize| -> &Lanes {
                dd[(k * M + q) * ldp + t0..][..L]
                    .try_into()
                    .expect("L lanes")
            };
            output_grad_lanes(a, lane, dm, p, o, t0, L.min(ld - t0));
        }
    }
}

#[inline(always)]
fn output_grad(
    var: Variant,
    dy: &[f32],
    d: &Dims,
    os: Range<usize>,
    dm: &Shared,
    p: Planes,
    col0: usize,
) {
    match var {
        Variant::F2 => output_grad_tiles::<2, 4>(f2::a, dy, d, os, dm, p, col0),
        Variant::F4 => output_grad_tiles::<4, 6>(f4::a, dy, d, os, dm, p, col0),
    }
}

/// `output_grad` for all tiles of `nb` images at once (`output_grad_narrow`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_grad_group(
    var: Variant,
    dy: &[f32],
    nb: usize,
    d: &Dims,
    os: Range<usize>,
    dm: &Shared,
    p: Planes,
) {
    match var {
        Variant::F2 => output_grad_narrow::<2, 4>(f2::a, dy, nb, d, os, dm, p),
        Variant::F4 => output_grad_narrow::<4, 6>(f4::a, dy, nb, d, os, dm, p),
    }
}

crate::kernels::multiversion!(
    output_grad_group,
    pub(super) output_grad_group_mv,
    fn(var: Variant, dy: &[f32], nb: usize, d: &Dims, os: Range<usize>, dm: &Shared, p: Planes)
);
crate::kernels::multiversion!(
    output_grad,
    pub(super) output_grad_mv,
    fn(var: Variant, dy: &[f32], d: &Dims, os: Range<usize>, dm: &Shared, p: Planes, col0: usize)
);

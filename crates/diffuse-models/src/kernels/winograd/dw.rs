//! The F(4×4) weight gradient on channels-last transforms, for layers whose channel counts
//! are multiples of 8 (all but a U-Net's first and last convolution).
//!
//! `dU[ξ] (co × ci) = Σ_t dM[ξ][t][o] · V[ξ][t][c]` reduces over the tiles t. With V and dM
//! laid out `[ξ][t][channel]` (t outermost), both GEMM operands are read in place by
//! `micro::tile` (A = dM with stride co, B = V with stride ci), where the channels-innermost
//! layout that the forward's GEMMs want made `gemm` pack both operands on every call (a third
//! of the weight gradient's time at 64 channels). The transforms then run on 8 channels of one
//! tile at a time, on x and dY moved to channels-last first, so their lanes are always full
//! and need no column-phase split.

use super::grad::output_grad_lanes;
use super::lanes::{Lanes, Planes, Shared, L, PLANE_PAD};
use super::micro::{tile, MR, NR};
use super::{f4, split, Dims, Variant};
use crate::kernels::matmul::transpose;
use std::ops::Range;

/// Whether a layer's weight gradient takes this path.
pub(super) fn applies(ci: usize, co: usize) -> bool {
    ci.is_multiple_of(L) && co.is_multiple_of(L)
}

/// `[nb, c, hw]` → `[nb, hw, c]` for the images `imgs`.
fn channels_last(x: &[f32], c: usize, hw: usize, imgs: Range<usize>, xt: &Shared) {
    for n in imgs {
        // SAFETY: each caller writes its own images.
        let dst = unsafe { xt.slice(n * hw * c, hw * c) };
        transpose(&x[n * c * hw..][..c * hw], c, hw, dst);
    }
}

/// Element (i, j) of tile (ty, tx)'s patch, channels c0..c0 + L, of image n of a channels-last
/// `[nb, h, w, c]` tensor: position (4ty + i − off, 4tx + j − off), zeros outside.
#[inline(always)]
fn patch<'a>(
    (xt, c, off): (&'a [f32], usize, usize),
    d: &Dims,
    (n, ty, tx): (usize, usize, usize),
    c0: usize,
    zero: &'a Lanes,
) -> impl Fn(usize, usize) -> &'a Lanes {
    let (h, w) = (d.h, d.w);
    move |i, j| {
        let (y, x) = (
            (4 * ty + i).wrapping_sub(off),
            (4 * tx + j).wrapping_sub(off),
        );
        if y < h && x < w {
            xt[((n * h + y) * w + x) * c + c0..][..L]
                .try_into()
                .expect("L lanes")
        } else {
            zero
        }
    }
}

/// `f(image, ty, tx, tile column)` for every tile of `nb` images.
#[inline(always)]
fn each_tile(nb: usize, d: &Dims, mut f: impl FnMut(usize, usize, usize, usize)) {
    for n in 0..nb {
        for ty in 0..d.th {
            for tx in 0..d.tw {
                f(n, ty, tx, (n * d.th + ty) * d.tw + tx);
            }
        }
    }
}

/// V `[ξ][t][ci]` for the group's tiles, channel blocks `cbs` (of L channels).
#[inline(always)]
fn input(xt: &[f32], nb: usize, d: &Dims, cbs: Range<usize>, v: &Shared, p: Planes) {
    let zero = [0f32; L];
    each_tile(nb, d, |n, ty, tx, t| {
        for c0 in cbs.clone().map(|cb| cb * L) {
            let lane = patch((xt, d.ci, 1), d, (n, ty, tx), c0, &zero);
            f4::input_lanes(lane, v, p, t, c0, L);
        }
    });
}

/// dM `[ξ][t][co]` for the group's tiles, output channel blocks `obs`.
#[inline(always)]
fn output_grad(dyt: &[f32], nb: usize, d: &Dims, obs: Range<usize>, dm: &Shared, p: Planes) {
    let zero = [0f32; L];
    each_tile(nb, d, |n, ty, tx, t| {
        for o0 in obs.clone().map(|ob| ob * L) {
            let lane = patch((dyt, d.co, 0), d, (n, ty, tx), o0, &zero);
            output_grad_lanes::<4, 6>(f4::a, lane, dm, p, t, o0, L);
        }
    });
}

// A tile's reads past a plane's last row: at most NR − L columns (ci is a multiple of L)
// and MR − 1 rows.
const _: () = assert!(PLANE_PAD >= NR - L && PLANE_PAD >= MR - 1);

/// dU[ξ] (+)= dM[ξ]ᵀ V[ξ] (co × ci over `tiles`) into `du` `[ξ][co][ci]` for the ξ in `xis`;
/// adds when `acc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm(
    (dm, mp): (&[f32], Planes),
    (v, vp): (&[f32], Planes),
    (co, ci, tiles): (usize, usize, usize),
    xis: Range<usize>,
    du: &Shared,
    acc: bool,
) {
    for xi in xis {
        // Rows past co (and columns past ci) read the next row's values, or the plane's
        // zeroed padding after its last row (asserted long enough below): their sums are
        // never stored.
        let (a, b) = (&dm[mp.at(xi, 0, 0)..], &v[vp.at(xi, 0, 0)..]);
        for o0 in (0..co).step_by(MR) {
            for c0 in (0..ci).step_by(NR) {
                let n = NR.min(ci - c0);
                tile((&a[o0..], co), (&b[c0..], ci), tiles, |r, row| {
                    let o = o0 + r;
                    if o < co {
                        // SAFETY: each caller writes its own ξ.
                        let dst = unsafe { du.slice((xi * co + o) * ci + c0, n) };
                        if acc {
                            dst.iter_mut().zip(row).for_each(|(d, s)| *d += s);
                        } else {
                            dst.copy_from_slice(&row[..n]);
                        }
                    }
                });
            }
        }
    }
}

crate::kernels::multiversion!(
    input,
    input_mv,
    fn(xt: &[f32], nb: usize, d: &Dims, cbs: Range<usize>, v: &Shared, p: Planes)
);
crate::kernels::multiversion!(
    output_grad,
    output_grad_mv,
    fn(dyt: &[f32], nb: usize, d: &Dims, obs: Range<usize>, dm: &Shared, p: Planes)
);
crate::kernels::multiversion!(
    gemm,
    gemm_mv,
    fn(
        m: (&[f32], Planes),
        v: (&[f32], Planes),
        sizes: (usize, usize, usize),
        xis: Range<usize>,
        du: &Shared,
        acc: bool,
    )
);

thread_local! {
    static XT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static DYT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One group's dU (`[ξ][co][ci]`, added to when `acc`): images `n0 .. n0 + nb` of x
/// `[b, ci, h, w]` and dy `[b, co, h, w]`, the work split over `parts` threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn group(
    x: &[f32],
    dy: &[f32],
    d: &Dims,
    (n0, nb): (usize, usize),
    du: &mut [f32],
    acc: bool,
    parts: usize,
) {
    let (hw, t) = (d.h * d.w, d.tiles());
    let ld = nb * t;
    let (vp, mp) = (Planes::new(ld, d.ci), Planes::new(ld, d.co));
    let xg = &x[n0 * d.ci * hw..(n0 + nb) * d.ci * hw];
    let dyg = &dy[n0 * d.co * hw..(n0 + nb) * d.co * hw];
    let xis = Variant::F4.xis();
    super::super::with_scratch(&XT, nb * hw * d.ci, |xt| {
        super::super::with_scratch(&DYT, nb * hw * d.co, |dyt| {
            let (xts, dyts) = (Shared::new(xt), Shared::new(dyt));
            split(nb, parts, |r| {
                channels_last(xg, d.ci, hw, r.clone(), &xts);
                channels_last(dyg, d.co, hw, r, &dyts);
            });
            // SAFETY: the transposes are done; from here both are only read.
            let (xt, dyt) =
                unsafe { (xts.slice(0, nb * hw * d.ci), dyts.slice(0, nb * hw * d.co)) };
            super::super::with_scratch(&super::V, vp.len(xis), |v| {
                vp.zero_pads(v, xis);
                let vs = Shared::new(v);
                split(d.ci / L, parts, |cbs| input_mv(xt, nb, d, cbs, &vs, vp));
                super::super::with_scratch(&super::M, mp.len(xis), |m| {
                    mp.zero_pads(m, xis);
                    let ms = Shared::new(m);
                    split(d.co / L, parts, |obs| {
                        output_grad_mv(dyt, nb, d, obs, &ms, mp)
                    });
                    // SAFETY: the transforms are done; from here V and dM are only read.
                    let (v, m) = unsafe { (vs.slice(0, vp.len(xis)), ms.slice(0, mp.len(xis))) };
                    let dus = Shared::new(du);
                    split(xis, parts, |r| {
                        gemm_mv((m, mp), (v, vp), (d.co, d.ci, ld), r, &dus, acc)
                    });
                });
            });
        });
    });
}

//! The Winograd-domain GEMMs M[ξ] = U[ξ] · V[ξ] with U packed once (the BLIS/GotoBLAS register
//! blocking, Goto & van de Geijn 2008): U[ξ] (co × ci) is stored in panels of `MR` output
//! channels, `[ξ][panel][c][MR]`, so the micro-kernel reads it sequentially; V[ξ] (ci × cols)
//! is read in place, `NR` columns of one row at a time. An `MR × NR` tile of M stays in
//! registers over the whole ci loop. The `gemm` crate packs both operands on every call, which
//! costs more than the multiplications for batch-1 layers (64 × 64 by 64 columns per ξ).

use super::super::uninit_vec;

/// Output channels per register tile.
pub const MR: usize = 6;
/// Columns per register tile (two AVX2 vectors).
pub const NR: usize = 16;

/// U `[ξ][co][ci]` → panels `[ξ][⌈co/MR⌉][ci][MR]`, zero rows past co.
pub fn pack(u: &[f32], xis: usize, co: usize, ci: usize) -> Vec<f32> {
    let panels = co.div_ceil(MR);
    let mut p = uninit_vec(xis * panels * ci * MR);
    for xi in 0..xis {
        for pb in 0..panels {
            let dst = &mut p[(xi * panels + pb) * ci * MR..][..ci * MR];
            for r in 0..MR {
                let o = pb * MR + r;
                if o < co {
                    let src = &u[(xi * co + o) * ci..][..ci];
                    for (c, v) in src.iter().enumerate() {
                        dst[c * MR + r] = *v;
                    }
                } else {
                    for c in 0..ci {
                        dst[c * MR + r] = 0.0;
                    }
                }
            }
        }
    }
    p
}

/// `acc[r][j] = Σ_c panel[c][r] · v[c·ld + j]` for one MR × NR tile, then `store(r, acc[r])`
/// for each row.
///
/// The accumulators stay local until the loop ends and the loop indexes through raw
/// pointers (bounds checked once, before it): returned by value, rows of the tile were
/// stored to the stack on every iteration, and each index was bounds checked, ~30 µops per
/// 12 FMAs.
#[inline(always)]
fn tile(panel: &[f32], v: &[f32], ld: usize, ci: usize, mut store: impl FnMut(usize, &[f32; NR])) {
    assert!(panel.len() >= ci * MR && (ci == 0 || v.len() >= (ci - 1) * ld + NR));
    let mut acc = [[0f32; NR]; MR];
    let (pp, vp) = (panel.as_ptr(), v.as_ptr());
    for c in 0..ci {
        // SAFETY: c·ld + NR ≤ v.len() and c·MR + MR ≤ panel.len() (asserted above).
        let (row, col) = unsafe {
            (
                &*(vp.add(c * ld) as *const [f32; NR]),
                &*(pp.add(c * MR) as *const [f32; MR]),
            )
        };
        for r in 0..MR {
            for j in 0..NR {
                acc[r][j] = col[r].mul_add(row[j], acc[r][j]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        store(r, row);
    }
}

/// M[o][t] for all o and the columns `cols` of one ξ: `panels` of U, V `[ci][ld]`, and M
/// `[co][ld]` written into `m` from `m0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    panels: &[f32],
    co: usize,
    ci: usize,
    v: &[f32],
    ld: usize,
    cols: std::ops::Range<usize>,
    m: &super::Shared,
    m0: usize,
) {
    let mut pad = Vec::new(); // allocated only for a tail tile
    let mut t = cols.start;
    while t < cols.end {
        let n = NR.min(cols.end - t);
        // A full tile reads V in place; a tail goes through a zero-padded copy.
        let (src, sld) = if n == NR && t + NR <= ld {
            (&v[t..], ld)
        } else {
            pad.resize(ci * NR, 0.0);
            for c in 0..ci {
                pad[c * NR..c * NR + n].copy_from_slice(&v[c * ld + t..][..n]);
                pad[c * NR + n..(c + 1) * NR].fill(0.0);
            }
            (&pad[..], NR)
        };
        for pb in 0..co.div_ceil(MR) {
            tile(
                &panels[pb * ci * MR..][..ci * MR],
                src,
                sld,
                ci,
                |r, row| {
                    let o = pb * MR + r;
                    if o < co {
                        // SAFETY: each caller writes its own columns of M.
                        let dst = unsafe { m.slice(m0 + o * ld + t, n) };
                        match <&mut [f32; NR]>::try_from(&mut *dst) {
                            Ok(full) => *full = *row,
                            Err(_) => dst.copy_from_slice(&row[..n]),
                        }
                    }
                },
            );
        }
        t += n;
    }
}

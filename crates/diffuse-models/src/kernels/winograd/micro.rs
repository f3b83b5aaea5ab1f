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

/// `acc[r][j] = Σ_c a[c·lda + r] · b[c·ldb + j]` for one MR × NR tile, then
/// `store(r, acc[r])` for each row: A is a packed panel (`lda = MR`) or any matrix stored with
/// the k index outermost.
///
/// On AVX2+FMA the loop is `tile_avx2`: its 12 accumulators are SSA values, which LLVM keeps
/// in registers. The portable loop below is the fallback; written on arrays, whether LLVM kept
/// its accumulators in registers changed with the code around it (stores of four to the stack
/// per iteration, 2× slower, after an unrelated change of the caller).
#[inline(always)]
pub(super) fn tile(
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    k: usize,
    mut store: impl FnMut(usize, &[f32; NR]),
) {
    assert!(k == 0 || (a.len() >= (k - 1) * lda + MR && b.len() >= (k - 1) * ldb + NR));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the reads stay inside a and b (asserted above).
        let acc = unsafe { tile_avx2(a.as_ptr(), lda, b.as_ptr(), ldb, k) };
        for (r, row) in acc.iter().enumerate() {
            store(r, row);
        }
        return;
    }
    let mut acc = [[0f32; NR]; MR];
    for c in 0..k {
        let row: &[f32; NR] = b[c * ldb..][..NR].try_into().expect("NR columns");
        let col: &[f32; MR] = a[c * lda..][..MR].try_into().expect("MR rows");
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

/// `tile`'s loop in AVX2 registers: 12 accumulators, 2 loads and 6 broadcasts per k.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` must hold `(k − 1)·lda + MR` floats and `b`
/// `(k − 1)·ldb + NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    k: usize,
) -> [[f32; NR]; MR] {
    use std::arch::x86_64::*;
    const _: () = assert!(MR == 6 && NR == 16);
    let z = _mm256_setzero_ps();
    let mut c = [[z; 2]; MR];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..k {
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        // A constant-index loop over an array of registers: unrolled, so `c` stays in SSA
        // registers.
        for (r, cr) in c.iter_mut().enumerate() {
            let ar = _mm256_broadcast_ss(&*ap.add(r));
            cr[0] = _mm256_fmadd_ps(ar, b0, cr[0]);
            cr[1] = _mm256_fmadd_ps(ar, b1, cr[1]);
        }
        ap = ap.add(lda);
        bp = bp.add(ldb);
    }
    let mut out = [[0f32; NR]; MR];
    for (o, cr) in out.iter_mut().zip(&c) {
        _mm256_storeu_ps(o.as_mut_ptr(), cr[0]);
        _mm256_storeu_ps(o.as_mut_ptr().add(8), cr[1]);
    }
    out
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
    m: &super::lanes::Shared,
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
                (&panels[pb * ci * MR..][..ci * MR], MR),
                (src, sld),
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

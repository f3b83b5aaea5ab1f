//! The `gemm` crate behind the kernels' matrix products (the crate candle's matmul uses): a
//! strided matrix view, `dst (+)= a · b` with the threading the caller chooses, and a tiled
//! transpose. Used by im2col convolution, the Winograd weight gradient and the linear layer.

use gemm::Parallelism;

/// A `[rows, cols]` f32 matrix view for the GEMM: element (r, c) at `r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl Mat {
    /// Element (r, c) at `s[r·rs + c·cs]`.
    pub(crate) fn strided(s: &[f32], rs: usize, cs: usize) -> Self {
        Mat {
            ptr: s.as_ptr(),
            rs: rs as isize,
            cs: cs as isize,
        }
    }
    /// A row-major `[rows, cols]` matrix.
    pub(crate) fn rows(s: &[f32], cols: usize) -> Self {
        Mat::strided(s, cols, 1)
    }
    /// The transpose of a row-major `[cols, rows]` matrix.
    pub(crate) fn transposed(s: &[f32], rows: usize) -> Self {
        Mat::strided(s, 1, rows)
    }
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]` with `dst` row-major; accumulates when `acc`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    acc: bool,
    par: Parallelism,
) {
    matmul_strided(dst, (n, 1), m, n, k, a, b, acc, par)
}

/// `matmul` with `dst` element (r, c) at `r·rs + c·cs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_strided(
    dst: &mut [f32],
    (rs, cs): (usize, usize),
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    acc: bool,
    par: Parallelism,
) {
    assert!(m == 0 || n == 0 || dst.len() > (m - 1) * rs + (n - 1) * cs);
    // SAFETY: dst covers every (r, c) (asserted); a and b come from slices that the callers
    // size for m × k and k × n with the strides given (their geometry).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            cs as isize,
            rs as isize,
            acc,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// Transposes `src` `[rows, cols]` into `dst` `[cols, rows]`: whole 8 × 8 blocks in AVX
/// registers where the CPU has AVX, the rest in 32 × 32 tiles. (The scalar tiles alone were
/// 43 % of the channels-last Winograd weight gradient's time at 64 channels, 32 px.)
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (r8, c8) = (rows - rows % 8, cols - cols % 8);
    #[cfg(target_arch = "x86_64")]
    let blocked = std::arch::is_x86_feature_detected!("avx");
    #[cfg(not(target_arch = "x86_64"))]
    let blocked = false;
    if blocked {
        for r0 in (0..r8).step_by(8) {
            for c0 in (0..c8).step_by(8) {
                // SAFETY: the CPU has AVX; rows r0..r0 + 8 and columns c0..c0 + 8 lie inside
                // src (rows × cols), their transpose inside dst (asserted above).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    transpose8x8(
                        &src[r0 * cols + c0..],
                        cols,
                        &mut dst[c0 * rows + r0..],
                        rows,
                    )
                };
            }
        }
        // The right columns of the whole row blocks, then the bottom rows.
        scalar(src, (rows, cols), (0..r8, c8..cols), dst);
        scalar(src, (rows, cols), (r8..rows, 0..cols), dst);
    } else {
        scalar(src, (rows, cols), (0..rows, 0..cols), dst);
    }

    fn scalar(
        src: &[f32],
        (rows, cols): (usize, usize),
        (rs, cs): (std::ops::Range<usize>, std::ops::Range<usize>),
        dst: &mut [f32],
    ) {
        const T: usize = 32;
        for r0 in rs.clone().step_by(T) {
            for c0 in cs.clone().step_by(T) {
                for r in r0..(r0 + T).min(rs.end) {
                    for c in c0..(c0 + T).min(cs.end) {
                        dst[c * rows + r] = src[r * cols + c];
                    }
                }
            }
        }
    }
}

/// `dst[j·lds + i] = src[i·ls + j]` for i, j < 8: eight rows transposed in AVX registers.
///
/// # Safety
/// The CPU must have AVX; src must hold `7·ls + 8` floats and dst `7·lds + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8x8(src: &[f32], ls: usize, dst: &mut [f32], lds: usize) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() >= 7 * ls + 8 && dst.len() >= 7 * lds + 8);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut r = [_mm256_setzero_ps(); 8];
    for (i, ri) in r.iter_mut().enumerate() {
        *ri = _mm256_loadu_ps(s.add(i * ls));
    }
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    // u[0..4] from rows 0–3, u[4..8] from rows 4–7: column j (mod 4) of each 128-bit half.
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for j in 0..4 {
        _mm256_storeu_ps(
            d.add(j * lds),
            _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]),
        );
        _mm256_storeu_ps(
            d.add((j + 4) * lds),
            _mm256_permute2f128_ps::<0x31>(u[j], u[j + 4]),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [
            (1, 1),
            (8, 8),
            (3, 17),
            (16, 24),
            (13, 40),
            (64, 1024),
            (9, 8),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![-1f32; rows * cols];
            super::transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}×{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}

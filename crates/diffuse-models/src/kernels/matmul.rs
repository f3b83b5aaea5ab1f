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

/// Transposes `src` `[rows, cols]` into `dst` `[cols, rows]` (in 32×32 tiles).
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

//! The data layout and lane primitives the Winograd transforms share: 8-tile lane vectors,
//! the α² planes of V and M with their cache-line padding, a slice that threads write in
//! disjoint parts, the column-phase split of a row, short copies, and the narrow transforms'
//! patch gather.

use super::Dims;

/// Tiles the lane-batched transforms work on at once (an AVX2 register of f32).
pub(super) const L: usize = 8;
pub(super) type Lanes = [f32; L];

/// Floats between two planes beyond their `rows × ld`: one cache line. At least L, so that
/// a lane read at a plane's last column stays in the buffer (`f4::m_lanes`; `dw` asserts
/// its own bound).
pub(super) const PLANE_PAD: usize = 16;
const _: () = assert!(PLANE_PAD >= L);

/// Where the α² planes of V `[ξ][ci][ld]` or M `[ξ][co][ld]` (`dw`: `[ξ][tile][channel]`) lie
/// in their buffer: `rows × ld` floats each, `stride` apart. Unpadded, the stride is a multiple of 4 KiB for most layers
/// (64 channels × 64 columns × 4 bytes), so the α² stores (or loads) of one tile's transform
/// all met in one L1 cache set; one cache line of padding spreads them over α² sets.
#[derive(Clone, Copy, Debug)]
pub(super) struct Planes {
    ld: usize,
    stride: usize,
}

impl Planes {
    pub(super) fn new(rows: usize, ld: usize) -> Self {
        Planes {
            ld,
            stride: rows * ld + PLANE_PAD,
        }
    }
    /// The offset of plane ξ's row `row`, column `col`.
    #[inline(always)]
    pub(super) fn at(self, xi: usize, row: usize, col: usize) -> usize {
        xi * self.stride + row * self.ld + col
    }
    /// The buffer length of `xis` planes.
    pub(super) fn len(self, xis: usize) -> usize {
        xis * self.stride
    }
    /// Zeroes the padding after each of the `xis` planes of `buf`: lane reads past a plane's
    /// last row (`f4::m_lanes`, `dw`) then see zeros, never uninitialised memory.
    pub(super) fn zero_pads(self, buf: &mut [f32], xis: usize) {
        for xi in 0..xis {
            buf[(xi + 1) * self.stride - PLANE_PAD..(xi + 1) * self.stride].fill(0.0);
        }
    }
}

/// Row y of a channel's `[h, w]` plane padded with `off` zero rows on top: its row `y − off`,
/// or None (a zero row) where that falls outside the plane.
#[inline(always)]
pub(super) fn padded_row<'a>(xc: &'a [f32], d: &Dims, y: usize, off: usize) -> Option<&'a [f32]> {
    let yy = y.wrapping_sub(off);
    (yy < d.h).then(|| &xc[yy * d.w..(yy + 1) * d.w])
}

/// A mutable slice that several threads write disjoint parts of.
pub(super) struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _data: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: threads only reach the data through `slice`, whose callers keep their parts disjoint.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    pub(super) fn new(s: &'a mut [f32]) -> Self {
        Shared {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _data: std::marker::PhantomData,
        }
    }
    /// `n` elements from `start`.
    ///
    /// # Safety
    /// No other live reference may overlap the returned range.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice(&self, start: usize, n: usize) -> &mut [f32] {
        assert!(start + n <= self.len, "winograd: write out of bounds");
        std::slice::from_raw_parts_mut(self.ptr.add(start), n)
    }
}

/// Splits a zero-padded row into its `P` column phases: `ph[p·len + k] = padded[P·k + p]`
/// with `padded[j] = row[j − off]` (zero outside, and zero for a missing row), for rows of `w`
/// columns.
///
/// Only the row's own positions are written (zeros for a missing row): the padding positions
/// are the same for every row of the image, so they stay zero from the buffer's allocation.
/// A per-row fill cost a `memset` call per row, 4 % of a sampling step.
///
/// For four phases on an AVX2 CPU, whole 32-column blocks (8 tiles) go through a register
/// de-interleave ([`deinterleave4x8`]) instead of 32 scalar stores, which were ~45 % of the
/// F(4×4) input transform's samples at 32 px. Narrower rows stay scalar: padding them into a
/// block measured slower at 8 and 16 px.
#[inline(always)]
pub(super) fn phases<const P: usize>(
    row: Option<&[f32]>,
    off: usize,
    w: usize,
    ph: &mut [f32],
    len: usize,
) {
    debug_assert!(row.is_none_or(|r| r.len() == w));
    match row {
        #[cfg(target_arch = "x86_64")]
        Some(row) if P == 4 && w >= 16 => {
            let mut whole = 0;
            if has_avx2() {
                whole = w - w % (4 * L);
                for (i, chunk) in row[..whole].chunks_exact(4 * L).enumerate() {
                    // SAFETY: the CPU has AVX2 (checked above).
                    let q = unsafe { deinterleave4x8(chunk.try_into().expect("32 columns")) };
                    for (r, qr) in q.iter().enumerate() {
                        // Row column 4k + r is padded column 4k + r + off.
                        let (p, s) = ((r + off) % 4, (r + off) / 4);
                        let dst: &mut Lanes =
                            (&mut ph[p * len + i * L + s..][..L]).try_into().unwrap();
                        *dst = *qr;
                    }
                }
            }
            while whole + 16 <= w {
                let q = deinterleave4x4(row[whole..whole + 16].try_into().expect("16 columns"));
                for (r, qr) in q.iter().enumerate() {
                    let (p, s) = ((r + off) % 4, (r + off) / 4);
                    let dst: &mut [f32; 4] = (&mut ph[p * len + whole / 4 + s..][..4])
                        .try_into()
                        .unwrap();
                    *dst = *qr;
                }
                whole += 16;
            }
            for (x, v) in row.iter().enumerate().skip(whole) {
                let j = x + off;
                ph[(j % P) * len + j / P] = *v;
            }
        }
        Some(row) => {
            for (x, v) in row.iter().enumerate() {
                let j = x + off;
                ph[(j % P) * len + j / P] = *v;
            }
        }
        None => {
            for j in off..off + w {
                ph[(j % P) * len + j / P] = 0.0;
            }
        }
    }
}

/// Whether the CPU has AVX2 (cached by std after the first call).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// `q[r][k] = s[4k + r]` for 4 groups of 4: a 4×4 transpose in SSE registers (part of every
/// x86-64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn deinterleave4x4(s: &[f32; 16]) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
    let mut out = [[0f32; 4]; 4];
    // SAFETY: SSE is part of the x86-64 baseline; loads and stores stay inside `s` and `out`.
    unsafe {
        let p = s.as_ptr();
        let (a, b) = (_mm_loadu_ps(p), _mm_loadu_ps(p.add(4)));
        let (c, d) = (_mm_loadu_ps(p.add(8)), _mm_loadu_ps(p.add(12)));
        let (t0, t1) = (_mm_unpacklo_ps(a, b), _mm_unpackhi_ps(a, b));
        let (t2, t3) = (_mm_unpacklo_ps(c, d), _mm_unpackhi_ps(c, d));
        let q = [
            _mm_movelh_ps(t0, t2),
            _mm_movehl_ps(t2, t0),
            _mm_movelh_ps(t1, t3),
            _mm_movehl_ps(t3, t1),
        ];
        for (o, v) in out.iter_mut().zip(q) {
            _mm_storeu_ps(o.as_mut_ptr(), v);
        }
    }
    out
}

/// `q[r][k] = s[4k + r]`: 8 groups of 4 split into 4 vectors of 8, with unpacks, shuffles and
/// one cross-lane permute per vector.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave4x8(s: &[f32; 4 * L]) -> [Lanes; 4] {
    use std::arch::x86_64::*;
    let p = s.as_ptr();
    // a = groups 0, 1; b = 2, 3; c = 4, 5; d = 6, 7 (one group per 128-bit lane).
    let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
    let (c, d) = (_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24)));
    let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    // Each shuffle leaves groups in the order 0 2 4 6 | 1 3 5 7; the permute restores 0..8.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let q = [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
    ];
    let mut out = [[0f32; L]; 4];
    for (o, v) in out.iter_mut().zip(q) {
        _mm256_storeu_ps(o.as_mut_ptr(), _mm256_permutevar8x32_ps(v, order));
    }
    out
}

/// Writes the first `dst.len()` (≤ L) lanes of `vals`: a full vector as one register move
/// instead of a `memcpy` call per 32 bytes.
#[inline(always)]
pub(super) fn put(dst: &mut [f32], vals: &Lanes) {
    if let Ok(full) = <&mut Lanes>::try_from(&mut *dst) {
        *full = *vals;
    } else {
        copy_short(dst, &vals[..dst.len()]);
    }
}

/// `dst.copy_from_slice(src)` for fewer than 32 floats as at most five fixed-size moves.
/// At 8 and 16 px a tile row is 2 or 4 tiles, and `copy_from_slice` there was a `memcpy` call
/// per 8 or 16 bytes: 6 % of a training step's samples.
#[inline(always)]
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn mv<const N: usize>(dst: &mut [f32], src: &[f32], k: &mut usize) {
        if dst.len() - *k >= N {
            let d: &mut [f32; N] = (&mut dst[*k..*k + N]).try_into().expect("N floats");
            *d = src[*k..*k + N].try_into().expect("N floats");
            *k += N;
        }
    }
    assert!(dst.len() == src.len() && dst.len() < 32);
    let mut k = 0;
    mv::<16>(dst, src, &mut k);
    mv::<8>(dst, src, &mut k);
    mv::<4>(dst, src, &mut k);
    mv::<2>(dst, src, &mut k);
    mv::<1>(dst, src, &mut k);
}

/// A channel's R × J tile patches across a group's images, `dd[i][j][col]` (col = the tile's
/// column of V or M, `ldp` apart), for the narrow transforms.
pub(super) struct Patches {
    pub(super) dd: Vec<f32>,
    pub(super) ldp: usize,
    /// One padded row's column phases; positions no row writes stay zero.
    ph: Vec<f32>,
    len: usize,
}

impl Patches {
    pub(super) fn new(elements: usize, ld: usize, tw: usize) -> Self {
        let (ldp, len) = (ld.next_multiple_of(L), tw + 1 + L);
        Patches {
            dd: vec![0f32; elements * ldp],
            ldp,
            ph: vec![0f32; 4 * len],
            len,
        }
    }

    /// Gathers channel c of `nb` images (x `[nb, chans, h, w]`): patch element (i, j) of tile
    /// (ty, tx) is x[P·ty + i − off][P·tx + j − off] (zero outside the image), through each
    /// row's P column phases.
    #[inline(always)]
    pub(super) fn gather<const P: usize, const R: usize, const J: usize>(
        &mut self,
        (x, chans, c): (&[f32], usize, usize),
        nb: usize,
        d: &Dims,
        off: usize,
    ) {
        let (hw, t, tw, len) = (d.h * d.w, d.tiles(), d.tw, self.len);
        for n in 0..nb {
            let xc = &x[(n * chans + c) * hw..][..hw];
            for ty in 0..d.th {
                let col = n * t + ty * tw;
                for i in 0..R {
                    let row = padded_row(xc, d, P * ty + i, off);
                    phases::<P>(row, off, d.w, &mut self.ph[..P * len], len);
                    for j in 0..J {
                        let src = &self.ph[(j % P) * len + j / P..][..tw];
                        copy_short(&mut self.dd[(i * J + j) * self.ldp + col..][..tw], src);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_copies_copy_every_length() {
        let src: Vec<f32> = (0..31).map(|i| i as f32).collect();
        for n in 0..32 {
            let mut dst = vec![-1f32; n];
            copy_short(&mut dst, &src[..n]);
            assert_eq!(dst, src[..n]);
        }
    }

    #[test]
    fn phases_match_the_scalar_split() {
        // Row widths around the 32-column chunks, both offsets the transforms use.
        for w in [1usize, 3, 4, 8, 13, 16, 20, 31, 32, 33, 40, 48, 52, 64, 70] {
            for off in [0usize, 1] {
                let row: Vec<f32> = (0..w).map(|x| x as f32 + 1.0).collect();
                let len = w.div_ceil(4) + 1 + L;
                let mut got = vec![0f32; 4 * len];
                phases::<4>(Some(&row), off, w, &mut got, len);
                let mut want = vec![0f32; 4 * len];
                for (x, v) in row.iter().enumerate() {
                    let j = x + off;
                    want[(j % 4) * len + j / 4] = *v;
                }
                assert_eq!(got, want, "w {w}, off {off}");
            }
        }
    }
}

//! Fused scaled dot-product attention, softmax(q kᵀ · scale) v, forward and backward, for the
//! small heads of a diffusion U-Net (diffusers' `attention_head_dim = 8` gives 16 heads of 8 at
//! 128 channels). Each (image, head, query block) computes its scores in a cache-resident
//! buffer, never a `[b, h, L, Lk]` tensor; the backward recomputes them (FlashAttention,
//! Dao et al. 2022, without the online softmax: a block's full score rows fit in cache).
//!
//! q, k, v are read through their strides (the `[b, L, h, d]` projections viewed as
//! `[b, h, L, d]` need no copy); the output and the gradients are written token-major,
//! `[b, L, h, d]`, and handed back as `[b, h, L, d]` views, so the caller's merge of the heads
//! is free too.

use super::group_norm::exp;
use super::matmul::transpose;
use super::{tensor_from, uninit_vec, with_scratch};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// The largest head dimension `ops::attention` sends here. Measured against candle's composed
/// ops (`examples/attention_shapes.rs`, 2 threads, forward / forward+backward ms): 16 heads of 8
/// at 8×8, batch 32: 3.3 / 25 against 20 / 66; DiT-S (6 heads of 64, 256 tokens, batch 8):
/// 22 / 105 against 42 / 152; one head of 128 (VAE, 16×16, batch 4): 3.3 / 11 against
/// 3.5 / 14; one head of 512 at 32×32: 96 / 318 against 24 / 70 (its GEMMs want the `gemm`
/// crate's packing, and one head gives the backward one task).
pub const MAX_HEAD_DIM: usize = 128;

/// Query rows per block: the block's scores (`ROWS × Lk`) stay in L1/L2.
const ROWS: usize = 64;

/// `c (+)= a · b` for row-major `a` `[m, k]`, `b` `[k, n]`, `c` `[m, n]` (leading dimensions
/// `k`, `n`, `n`), in register blocks of 8 accumulators (4 rows × 16 columns, or 8 × 8 where
/// `n` is a head dimension of 8), so that the FMA chains overlap.
#[inline(always)]
fn mm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, acc: bool) {
    let mut i = 0;
    if n >= 16 {
        while i + 4 <= m {
            block::<4, 16>(a, b, c, i, k, n, acc);
            i += 4;
        }
    } else {
        while i + 8 <= m {
            block::<8, 8>(a, b, c, i, k, n, acc);
            i += 8;
        }
    }
    while i < m {
        block::<1, 8>(a, b, c, i, k, n, acc);
        i += 1;
    }
}

/// Rows `i..i + R` of `c (+)= a · b`, `C` columns at a time (a zero-padded copy of `b`'s
/// columns for the last, partial block).
#[inline(always)]
fn block<const R: usize, const C: usize>(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    i: usize,
    k: usize,
    n: usize,
    acc: bool,
) {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * k..][..k]);
    let mut j = 0;
    while j < n {
        let w = (n - j).min(C);
        let mut t = [[0f32; C]; R];
        for p in 0..k {
            let bv: [f32; C] = if w == C {
                b[p * n + j..][..C].try_into().expect("C columns")
            } else {
                let mut bv = [0f32; C];
                bv[..w].copy_from_slice(&b[p * n + j..][..w]);
                bv
            };
            for r in 0..R {
                let av = rows[r][p];
                for l in 0..C {
                    t[r][l] = av.mul_add(bv[l], t[r][l]);
                }
            }
        }
        for (r, tr) in t.iter().enumerate() {
            let row = &mut c[(i + r) * n + j..][..w];
            if acc {
                row.iter_mut().zip(tr).for_each(|(o, v)| *o += v);
            } else {
                row.copy_from_slice(&tr[..w]);
            }
        }
        j += w;
    }
}

/// Row-wise softmax of `s · scale` (rows of `n`), in place.
#[inline(always)]
fn softmax_rows(s: &mut [f32], n: usize, scale: f32) {
    for row in s.chunks_exact_mut(n) {
        // Each pass is one vectorized loop; the max and the sum run in 8 lanes.
        row.iter_mut().for_each(|v| *v *= scale);
        let max = lanes(row, f32::NEG_INFINITY, f32::max);
        row.iter_mut().for_each(|v| *v = exp(*v - max));
        let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `f`-reduction of `x` from `init`, in 8 lanes.
#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    for c in chunks {
        for i in 0..8 {
            acc[i] = f(acc[i], c[i]);
        }
    }
    acc.into_iter().fold(rest, f)
}

/// Σ a·b, in 8 lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

crate::kernels::multiversion!(
    mm,
    mm_mv,
    fn(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, acc: bool)
);
crate::kernels::multiversion!(
    softmax_rows,
    softmax_rows_mv,
    fn(s: &mut [f32], n: usize, scale: f32)
);

/// A `[b, h, L, d]` operand read through its strides (`d` contiguous).
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 3],
    len: usize,
    d: usize,
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], l: &Layout) -> Result<Self> {
        let (dims, st) = (l.dims(), l.stride());
        if dims.len() != 4 || st[3] != 1 {
            bail!(
                "attention kernel: expected [b, h, L, d] with d contiguous, got {dims:?} / {st:?}"
            );
        }
        Ok(View {
            data,
            start: l.start_offset(),
            stride: [st[0], st[1], st[2]],
            len: dims[2],
            d: dims[3],
        })
    }

    fn row(&self, b: usize, h: usize, i: usize) -> &'a [f32] {
        let o = self.start + b * self.stride[0] + h * self.stride[1] + i * self.stride[2];
        &self.data[o..o + self.d]
    }

    /// Rows `i0..i0 + n` of head (b, h) into `dst` `[n, d]`.
    fn gather(&self, b: usize, h: usize, i0: usize, n: usize, dst: &mut [f32]) {
        for (i, out) in dst.chunks_exact_mut(self.d).take(n).enumerate() {
            out.copy_from_slice(self.row(b, h, i0 + i));
        }
    }

    /// The head's rows transposed into `dst` `[d, L]`.
    fn gather_t(&self, b: usize, h: usize, dst: &mut [f32]) {
        for i in 0..self.len {
            for (c, v) in self.row(b, h, i).iter().enumerate() {
                dst[c * self.len + i] = *v;
            }
        }
    }
}

/// A token-major `[b, L, h, d]` output written by disjoint (b, h, rows) tasks.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
    heads: usize,
    d: usize,
}
// SAFETY: tasks write disjoint rows (see `put`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn new(v: &mut [f32], heads: usize, d: usize, len: usize) -> Self {
        Out {
            ptr: v.as_mut_ptr(),
            len,
            heads,
            d,
        }
    }

    /// Writes `src` `[n, d]` (times `scale`) to rows `i0..i0 + n` of head (b, h).
    /// Each (b, h, row) is written by one task only.
    fn put(&self, b: usize, h: usize, i0: usize, src: &[f32], scale: f32) {
        for (i, row) in src.chunks_exact(self.d).enumerate() {
            let o = ((b * self.len + i0 + i) * self.heads + h) * self.d;
            // SAFETY: `o + d` lies inside the `[b, L, h, d]` buffer this was made from, and the
            // rows of distinct (b, h, i) do not overlap.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(o), self.d) };
            dst.iter_mut().zip(row).for_each(|(o, v)| *o = v * scale);
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Splits `buf` into consecutive pieces of the given lengths.
fn carve<const N: usize>(mut buf: &mut [f32], lens: [usize; N]) -> [&mut [f32]; N] {
    lens.map(|n| {
        let (a, rest) = std::mem::take(&mut buf).split_at_mut(n);
        buf = rest;
        a
    })
}

/// The forward: `[b, L, h, d]` (token-major).
fn forward(q: View, k: View, v: View, heads: usize, b: usize, scale: f32) -> Vec<f32> {
    let (l, lk, d) = (q.len, k.len, q.d);
    let mut out = uninit_vec(b * l * heads * d);
    let o = Out::new(&mut out, heads, d, l);
    let blocks = l.div_ceil(ROWS);
    (0..b * heads * blocks).into_par_iter().for_each(|t| {
        let (bh, blk) = (t / blocks, t % blocks);
        let (bi, h) = (bh / heads, bh % heads);
        let (i0, n) = (blk * ROWS, ROWS.min(l - blk * ROWS));
        with_scratch(&SCRATCH, 2 * d * lk + n * lk + 2 * n * d, |buf| {
            let [kt, vh, s, qb, ob] = carve(buf, [d * lk, lk * d, n * lk, n * d, n * d]);
            k.gather_t(bi, h, kt);
            v.gather(bi, h, 0, lk, vh);
            q.gather(bi, h, i0, n, qb);
            mm_mv(qb, kt, s, n, d, lk, false); // [n, Lk]
            softmax_rows_mv(s, lk, scale);
            mm_mv(s, vh, ob, n, lk, d, false); // [n, d]
            o.put(bi, h, i0, ob, 1.0);
        });
    });
    out
}

/// The backward: `(dq, dk, dv)`, each token-major like the forward's output.
fn backward(
    q: View,
    k: View,
    v: View,
    dy: View,
    heads: usize,
    b: usize,
    scale: f32,
) -> [Vec<f32>; 3] {
    let (l, lk, d) = (q.len, k.len, q.d);
    let mut dq = uninit_vec(b * l * heads * d);
    let mut dk = uninit_vec(b * lk * heads * d);
    let mut dv = uninit_vec(b * lk * heads * d);
    let (oq, ok, ov) = (
        Out::new(&mut dq, heads, d, l),
        Out::new(&mut dk, heads, d, lk),
        Out::new(&mut dv, heads, d, lk),
    );
    (0..b * heads).into_par_iter().for_each(|bh| {
        let (bi, h) = (bh / heads, bh % heads);
        let n_max = ROWS.min(l);
        let lens = [
            d * lk,     // kᵀ
            lk * d,     // k
            d * lk,     // vᵀ
            lk * d,     // dk
            lk * d,     // dv
            n_max * lk, // p
            n_max * lk, // dp, then ds
            lk * n_max, // pᵀ, then dsᵀ
            n_max * d,  // q block
            n_max * d,  // dy block
            n_max * d,  // dq block
        ];
        with_scratch(&SCRATCH, lens.iter().sum(), |buf| {
            let [kt, kh, vt, dkh, dvh, p, dp, t, qb, dyb, dqb] = carve(buf, lens);
            k.gather_t(bi, h, kt);
            k.gather(bi, h, 0, lk, kh);
            v.gather_t(bi, h, vt);
            dkh.fill(0.0);
            dvh.fill(0.0);
            for i0 in (0..l).step_by(ROWS) {
                let n = ROWS.min(l - i0);
                let (p, dp, t) = (&mut p[..n * lk], &mut dp[..n * lk], &mut t[..n * lk]);
                let (qb, dyb, dqb) = (&mut qb[..n * d], &mut dyb[..n * d], &mut dqb[..n * d]);
                q.gather(bi, h, i0, n, qb);
                dy.gather(bi, h, i0, n, dyb);
                mm_mv(qb, kt, p, n, d, lk, false);
                softmax_rows_mv(p, lk, scale); // P [n, Lk]
                mm_mv(dyb, vt, dp, n, d, lk, false); // dP = dY · vᵀ
                                                     // dS = P ⊙ (dP − Σⱼ P·dP), row by row.
                for (pr, dr) in p.chunks_exact(lk).zip(dp.chunks_exact_mut(lk)) {
                    let dot = dot(pr, dr);
                    dr.iter_mut().zip(pr).for_each(|(g, p)| *g = p * (*g - dot));
                }
                transpose(p, n, lk, t);
                mm_mv(t, dyb, dvh, lk, n, d, true); // dv += Pᵀ · dY
                mm_mv(dp, kh, dqb, n, lk, d, false); // dq = dS · k
                oq.put(bi, h, i0, dqb, scale);
                transpose(dp, n, lk, t);
                mm_mv(t, qb, dkh, lk, n, d, true); // dk += dSᵀ · q
            }
            ok.put(bi, h, 0, dkh, scale);
            ov.put(bi, h, 0, dvh, 1.0);
        });
    });
    [dq, dk, dv]
}

/// The CustomOp: arguments `(q, k, v)`, `[b, h, L, d]` / `[b, h, Lk, d]`; result `[b, L, h, d]`.
#[derive(Debug, Clone, Copy)]
struct Attention {
    scale: f32,
}

/// The shape checks shared by the forward and the backward: `(b, h, d)`.
fn check(q: &Layout, k: &Layout, v: &Layout) -> Result<(usize, usize, usize)> {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    if qd.len() != 4 || kd != vd || kd.len() != 4 || qd[..2] != kd[..2] || qd[3] != kd[3] {
        bail!("attention kernel: q {qd:?}, k {kd:?} and v {vd:?} do not match as [b, h, L, d]");
    }
    Ok((qd[0], qd[1], qd[3]))
}

fn cpu(s: &CpuStorage) -> Result<&[f32]> {
    s.as_slice::<f32>()
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "diffuse-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        super::count_forward();
        let (b, h, d) = check(l1, l2, l3)?;
        let q = View::new(cpu(s1)?, l1)?;
        let (k, v) = (View::new(cpu(s2)?, l2)?, View::new(cpu(s3)?, l3)?);
        let y = forward(q, k, v, h, b, self.scale);
        Ok((CpuStorage::F32(y), Shape::from((b, q.len, h, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // dy is `[b, L, h, d]`; read it as `[b, h, L, d]` like q.
        let dy = unit_stride(&dy.transpose(1, 2)?)?;
        let (b, h, d) = (q.dim(0)?, q.dim(1)?, q.dim(3)?);
        let (l, lk) = (q.dim(2)?, k.dim(2)?);
        let (sq, lq) = q.storage_and_layout();
        let (sk, lkl) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (sd, ld) = dy.storage_and_layout();
        let [dq, dk, dv] = match (&*sq, &*sk, &*sv, &*sd) {
            (Storage::Cpu(a), Storage::Cpu(bk), Storage::Cpu(c), Storage::Cpu(e)) => {
                check(lq, lkl, lv)?;
                let views = (
                    View::new(cpu(a)?, lq)?,
                    View::new(cpu(bk)?, lkl)?,
                    View::new(cpu(c)?, lv)?,
                    View::new(cpu(e)?, ld)?,
                );
                backward(views.0, views.1, views.2, views.3, h, b, self.scale)
            }
            _ => bail!("attention kernel: tensors are not on the CPU"),
        };
        Ok((
            Some(tensor_from(dq, &[b, l, h, d])?.transpose(1, 2)?),
            Some(tensor_from(dk, &[b, lk, h, d])?.transpose(1, 2)?),
            Some(tensor_from(dv, &[b, lk, h, d])?.transpose(1, 2)?),
        ))
    }
}

/// softmax(q kᵀ · scale) v for f32 CPU `[b, h, L, d]` q and `[b, h, Lk, d]` k, v (any strides
/// with `d` contiguous): `[b, h, L, d]`, a view of a token-major `[b, L, h, d]` buffer.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let op = Attention {
        scale: scale as f32,
    };
    unit_stride(q)?
        .apply_op3(&unit_stride(k)?, &unit_stride(v)?, op)?
        .transpose(1, 2)
}

/// `t` itself when it is 4-D with its last dimension contiguous (what [`View`] reads), else a
/// contiguous copy.
fn unit_stride(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 4 && t.stride()[3] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{assert_matches, gradcheck, max_rel, rand_tensor};

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let s = (q.matmul(&k.transpose(2, 3).unwrap()).unwrap() * scale).unwrap();
        candle_nn::ops::softmax(&s, candle_core::D::Minus1)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    /// `[b, L, h, d]` data viewed as `[b, h, L, d]`, as the models' head split makes it.
    fn heads(dims: [usize; 4], seed: u64, mul: f64) -> Tensor {
        let [b, h, l, d] = dims;
        (rand_tensor(&[b, l, h, d], seed) * mul)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    }

    #[test]
    fn forward_and_backward_match_candle() {
        // (b, h, L, Lk, d): the U-Net's 8×8 level, odd sizes (partial row blocks and lanes),
        // cross-attention (Lk ≠ L), more than one query block.
        for (i, &(b, h, l, lk, d)) in [
            (2usize, 16usize, 64usize, 64usize, 8usize),
            (1, 3, 7, 5, 3),
            (2, 2, 9, 77, 12),
            (1, 2, 150, 150, 16),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let q = candle_core::Var::from_tensor(&heads([b, h, l, d], seed, 2.0)).unwrap();
            let k = candle_core::Var::from_tensor(&heads([b, h, lk, d], seed + 1, 2.0)).unwrap();
            let v = candle_core::Var::from_tensor(&heads([b, h, lk, d], seed + 2, 1.0)).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let ours = attention(&q, &k, &v, scale).unwrap();
            let theirs = reference(&q, &k, &v, scale);
            assert_matches(
                i,
                ours,
                theirs,
                &[("q", &q), ("k", &k), ("v", &v)],
                seed + 3,
            );
        }
    }

    #[test]
    fn finite_differences() {
        let f = |t: &[Tensor]| attention(&t[0], &t[1], &t[2], 0.5).unwrap();
        let inputs = [
            heads([2, 2, 5, 3], 1, 1.0),
            heads([2, 2, 6, 3], 2, 1.0),
            heads([2, 2, 6, 3], 3, 1.0),
        ];
        gradcheck(&f, &inputs, 16, 3e-3);
    }

    #[test]
    fn contiguous_and_strided_inputs_agree() {
        let q = heads([1, 4, 20, 8], 5, 1.0);
        let k = heads([1, 4, 20, 8], 6, 1.0);
        let v = heads([1, 4, 20, 8], 7, 1.0);
        let a = attention(&q, &k, &v, 0.3).unwrap();
        let c = |t: &Tensor| t.contiguous().unwrap();
        let b = attention(&c(&q), &c(&k), &c(&v), 0.3).unwrap();
        assert_eq!(max_rel(&a, &b), 0.0);
    }

    #[test]
    fn mismatched_shapes_are_clear() {
        let q = rand_tensor(&[1, 2, 4, 8], 0);
        let k = rand_tensor(&[1, 2, 4, 4], 1);
        let e = attention(&q, &k, &k, 1.0).unwrap_err();
        assert!(e.to_string().contains("do not match"), "{e}");
    }
}

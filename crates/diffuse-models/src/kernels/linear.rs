//! Affine layer `y = x Wᵀ + b` (torch `nn.Linear`, weight `[out, in]`), forward and backward,
//! through the `gemm` crate with the threading chosen here: rows split over our threads for
//! large products, one thread for small ones. candle's matmul hands `x · Wᵀ` to `gemm` with a
//! column-major right operand and `gemm`'s own threading, which costs up to 12× one thread at
//! the U-Net's sizes (`examples/matmul_threading.rs`, 2 threads: `[16, 512] · [512, 128]ᵀ`
//! 268 µs against 22 µs; `[64, 128] · [128, 128]ᵀ` 96 µs against 23 µs), and then adds the
//! bias in a broadcast pass of its own. Here the bias seeds the output.

use super::matmul::{matmul, Mat};
use super::{f32_slice, tensor_from, threads, uninit_vec, with_f32};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Products of at least this many multiply-adds (m·n·k) split their rows over the threads.
const PARALLEL_MACS: usize = 1 << 21;

/// A matrix operand, sendable to the threads: (data, row stride, column stride).
type Operand<'a> = (&'a [f32], usize, usize);

/// `dst (m × n, row-major) = [dst +] lhs (m × k) · rhs (k × n)`, rows split over the threads
/// when the product is large.
fn matmul_rows(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    acc: bool,
    lhs: Operand,
    rhs: Operand,
) {
    let one = |d: &mut [f32], rows: std::ops::Range<usize>| {
        if rows.is_empty() {
            return;
        }
        let a = Mat::strided(&lhs.0[rows.start * lhs.1..], lhs.1, lhs.2);
        let b = Mat::strided(rhs.0, rhs.1, rhs.2);
        matmul(d, rows.len(), n, k, a, b, acc, Parallelism::None);
    };
    let parts = threads().min(m / 8).max(1);
    if parts == 1 || m * n * k < PARALLEL_MACS {
        return one(&mut dst[..m * n], 0..m);
    }
    let per = m.div_ceil(parts);
    dst[..m * n]
        .par_chunks_mut(per * n)
        .enumerate()
        .for_each(|(i, d)| one(d, i * per..(i * per + d.len() / n)));
}

/// Forward: `x` `[m, k]`, `w` `[n, k]`, `b` `[n]` → `[m, n]`.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = uninit_vec(m * n);
    for row in y.chunks_exact_mut(n.max(1)) {
        row.copy_from_slice(b);
    }
    // y += x · wᵀ: wᵀ is w read with row stride 1 and column stride k.
    matmul_rows(&mut y, (m, n, k), true, (x, k, 1), (w, 1, k));
    y
}

/// Backward: `(dx [m, k], dw [n, k], db [n])` from `dy` `[m, n]`.
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (m, n, k): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = uninit_vec(m * k);
    matmul_rows(&mut dx, (m, k, n), false, (dy, n, 1), (w, k, 1)); // dy · w
    let mut dw = uninit_vec(n * k);
    matmul_rows(&mut dw, (n, k, m), false, (dy, 1, n), (x, k, 1)); // dyᵀ · x
    let mut db = vec![0f32; n];
    for row in dy.chunks_exact(n.max(1)) {
        db.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    (dx, dw, db)
}

/// The CustomOp: arguments `(x [m, k], w [n, k], b [n])`; `bias: false` gives no gradient for
/// the (zero) bias argument.
#[derive(Debug, Clone, Copy)]
struct Linear {
    bias: bool,
}

fn dims(x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    match (x.dims(), w.dims()) {
        (&[m, k], &[n, k2]) if k == k2 => Ok((m, n, k)),
        (xd, wd) => bail!("linear: input {xd:?} does not match weight {wd:?} ([out, in])"),
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "diffuse-linear"
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
        let (m, n, k) = dims(l1, l2)?;
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        Ok((
            CpuStorage::F32(forward(x, w, b, m, n, k)),
            Shape::from((m, n)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let (dx, dw, db) = with_f32(x, |xs| {
            with_f32(w, |ws| with_f32(dy, |d| Ok(backward(xs, ws, d, (m, n, k)))))
        })?;
        let db = self.bias.then(|| tensor_from(db, b.dims())).transpose()?;
        Ok((
            Some(tensor_from(dx, &[m, k])?),
            Some(tensor_from(dw, &[n, k])?),
            db,
        ))
    }
}

/// `x Wᵀ + b` over the last dimension of an f32 CPU `x` `[…, in]`, weight `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else {
        bail!("linear: the input is a scalar");
    };
    let n = w.dim(0)?;
    let m: usize = lead.iter().product();
    let y = x.contiguous()?.reshape((m, k))?.apply_op3(
        &w.contiguous()?,
        &super::bias_or_zeros(b, w)?.contiguous()?,
        Linear { bias: b.is_some() },
    )?;
    let mut out = lead.to_vec();
    out.push(n);
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{assert_matches, gradcheck, max_rel, rand_tensor};

    #[test]
    fn forward_and_backward_match_candle() {
        // (input dims, out): a time-embedding row, attention tokens, rows split over threads,
        // odd sizes.
        for (i, (dims, n)) in [
            (vec![1usize, 512usize], 128usize),
            (vec![2, 64, 128], 128),
            (vec![700, 33], 70),
            (vec![3, 5, 7], 9),
        ]
        .into_iter()
        .enumerate()
        {
            let k = *dims.last().unwrap();
            let seed = 10 * i as u64;
            let x = candle_core::Var::from_tensor(&rand_tensor(&dims, seed)).unwrap();
            let w = candle_core::Var::from_tensor(&rand_tensor(&[n, k], seed + 1)).unwrap();
            let b = candle_core::Var::from_tensor(&rand_tensor(&[n], seed + 2)).unwrap();
            let reference =
                candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
            let ours = linear(&x, &w, Some(&b)).unwrap();
            let theirs = candle_nn::Module::forward(&reference, x.as_tensor()).unwrap();
            assert_matches(
                i,
                ours,
                theirs,
                &[("x", &x), ("w", &w), ("b", &b)],
                seed + 3,
            );
        }
    }

    #[test]
    fn finite_differences() {
        let f = |t: &[Tensor]| linear(&t[0], &t[1], Some(&t[2])).unwrap();
        let inputs = [
            rand_tensor(&[2, 3, 5], 1),
            rand_tensor(&[4, 5], 2),
            rand_tensor(&[4], 3),
        ];
        gradcheck(&f, &inputs, 12, 3e-3);
        let g = |t: &[Tensor]| linear(&t[0], &t[1], None).unwrap();
        gradcheck(&g, &inputs[..2], 12, 3e-3);
    }

    #[test]
    fn transposed_input_and_bad_shapes() {
        // [b, c, L] viewed as [b, L, c]: made contiguous first (candle 0.11.1's broadcast
        // matmul gets this case wrong, see `ops::linear`).
        let x = rand_tensor(&[2, 6, 7], 4).transpose(1, 2).unwrap();
        let w = rand_tensor(&[5, 6], 5);
        let want = linear(&x.contiguous().unwrap(), &w, None).unwrap();
        assert_eq!(max_rel(&linear(&x, &w, None).unwrap(), &want), 0.0);
        let e = linear(&x, &rand_tensor(&[5, 4], 6), None).unwrap_err();
        assert!(e.to_string().contains("does not match weight"), "{e}");
    }
}

//! The one seam for speed (docs/ARCHITECTURE.md): models call these, never candle's hot ops directly,
//! so a faster kernel (CPU CustomOp with backward, cuDNN, f16) can be swapped in here,
//! benchmarked and gradient-checked in one place. On the CPU in f32 our kernels
//! (`crate::kernels`) run conv2d and GroupNorm(+SiLU); elsewhere (CUDA, f16/bf16) and with
//! `DIFFUSE_KERNELS=candle`, candle's own ops do.
//!
//! Low precision (bf16/f16 activations, as `diffuse train` with `train.mixed_precision` and
//! `diffuse sample --dtype` run them): like torch.autocast, GroupNorm, LayerNorm and the
//! attention softmax compute in f32 and cast their result back; convolutions and matmuls run
//! in the activations' dtype. candle 0.11.1's CPU convolution has no bf16 kernel, so on the CPU
//! a bf16 convolution widens its (bf16-valued) operands to f32, convolves and rounds the result
//! to bf16: a GPU's bf16 convolution (f32 accumulation) up to summation order.

use crate::kernels;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, Module, VarBuilder};

/// Whether `x` is bf16 or f16 (its statistics are then taken in f32).
fn is_low_precision(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::BF16 | DType::F16)
}

/// Whether `x` goes through our CPU kernels.
fn use_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && kernels::enabled()
}

/// Whether `conv` on `x` goes through our conv kernel (f32 weights, no dilation or groups).
fn conv_kernel_applies(x: &Tensor, conv: &candle_nn::Conv2d) -> bool {
    let cfg = conv.config();
    use_kernels(x) && conv.weight().dtype() == DType::F32 && cfg.dilation == 1 && cfg.groups == 1
}

/// The f32 twin of a bf16 convolution on the CPU (see the module docs), else None.
fn cpu_bf16_widened(x: &Tensor, conv: &candle_nn::Conv2d) -> Result<Option<candle_nn::Conv2d>> {
    if x.dtype() != DType::BF16 || !x.device().is_cpu() {
        return Ok(None);
    }
    let bias = conv.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
    Ok(Some(candle_nn::Conv2d::new(
        conv.weight().to_dtype(DType::F32)?,
        bias,
        *conv.config(),
    )))
}

/// The profile label of a convolution layer.
fn conv_label(conv: &candle_nn::Conv2d) -> &'static str {
    let k = conv.weight().dims().get(2).copied().unwrap_or(0);
    match (k, conv.config().stride) {
        (3, 1) => "conv 3×3",
        (3, _) => "conv 3×3, stride 2",
        (1, _) => "conv 1×1",
        _ => "conv, other",
    }
}

/// 2-D convolution with the layer's padding/stride: `[b, c, h, w]` → `[b, c', h', w']`.
pub fn conv2d(x: &Tensor, conv: &candle_nn::Conv2d) -> Result<Tensor> {
    let _t = crate::profile::scope(conv_label(conv));
    if let Some(wide) = cpu_bf16_widened(x, conv)? {
        return conv2d(&x.to_dtype(DType::F32)?, &wide)?.to_dtype(DType::BF16);
    }
    let cfg = conv.config();
    if conv_kernel_applies(x, conv) {
        kernels::conv2d::conv2d(x, conv.weight(), conv.bias(), cfg.stride, cfg.padding)
    } else {
        conv.forward(x)
    }
}

/// `conv2d(x) + shift` with a per-image, per-channel `shift` `[b, c']` (the ResNet block's
/// time embedding), added through the conv's bias in our kernel: no extra pass over the output.
pub fn conv2d_shifted(x: &Tensor, conv: &candle_nn::Conv2d, shift: &Tensor) -> Result<Tensor> {
    let _t = crate::profile::scope(conv_label(conv));
    if let Some(wide) = cpu_bf16_widened(x, conv)? {
        let (x, shift) = (x.to_dtype(DType::F32)?, shift.to_dtype(DType::F32)?);
        return conv2d_shifted(&x, &wide, &shift)?.to_dtype(DType::BF16);
    }
    let cfg = conv.config();
    if conv_kernel_applies(x, conv) {
        let bias = match conv.bias() {
            Some(b) => shift.broadcast_add(&b.unsqueeze(0)?)?,
            None => shift.clone(),
        };
        kernels::conv2d::conv2d(x, conv.weight(), Some(&bias), cfg.stride, cfg.padding)
    } else {
        conv.forward(x)?
            .broadcast_add(&shift.unsqueeze(2)?.unsqueeze(3)?)
    }
}

/// GroupNorm's parameters under diffusers' names (`weight` = γ, `bias` = β; torch's init).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) groups: usize,
    pub(crate) eps: f64,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {channels} channels do not split into {groups} groups");
        }
        Ok(GroupNorm {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            groups,
            eps,
        })
    }
}

/// Group normalization, optionally followed by SiLU (the pair every ResNet block runs).
pub fn group_norm(x: &Tensor, norm: &GroupNorm, then_silu: bool) -> Result<Tensor> {
    let _t = crate::profile::scope(if then_silu {
        "group_norm + SiLU"
    } else {
        "group_norm"
    });
    if is_low_precision(x) {
        let f32_norm = GroupNorm {
            weight: norm.weight.to_dtype(DType::F32)?,
            bias: norm.bias.to_dtype(DType::F32)?,
            ..norm.clone()
        };
        return group_norm(&x.to_dtype(DType::F32)?, &f32_norm, then_silu)?.to_dtype(x.dtype());
    }
    if use_kernels(x) && norm.weight.dtype() == DType::F32 {
        return kernels::group_norm::group_norm(
            x,
            &norm.weight,
            &norm.bias,
            norm.groups,
            norm.eps,
            then_silu,
        );
    }
    let c = x.dim(1)?;
    let plain = candle_nn::GroupNorm::new(
        norm.weight.clone(),
        norm.bias.clone(),
        c,
        norm.groups,
        norm.eps,
    )?;
    let y = plain.forward(x)?;
    if then_silu {
        y.silu()
    } else {
        Ok(y)
    }
}

/// Affine layer over the last dimension. The input is made contiguous first: candle 0.11.1's
/// `Linear` on a transposed 3-D input (its broadcast-weight matmul path) returns wrong values
/// on the CPU (found by the UNet parity tests: attention over `[b, c, L]ᵀ`).
/// On the CPU in f32 our kernel runs it (`kernels::linear`: candle's matmul threads small
/// `x · Wᵀ` products badly, and adds the bias in a pass of its own).
pub fn linear(x: &Tensor, l: &candle_nn::Linear) -> Result<Tensor> {
    let _t = crate::profile::scope("linear");
    if use_kernels(x) && l.weight().dtype() == DType::F32 {
        return kernels::linear::linear(x, l.weight(), l.bias());
    }
    if x.is_contiguous() {
        l.forward(x)
    } else {
        l.forward(&x.contiguous()?)
    }
}

/// LayerNorm over the last dimension, `(x − mean) / √(var + eps)` (biased variance, as torch),
/// then `· weight + bias` when given. Composed of candle ops that all have a backward
/// (`candle_nn::ops::layer_norm` has none), so the DiT trains through it.
pub fn layer_norm(x: &Tensor, eps: f64, affine: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    if is_low_precision(x) {
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let y = match affine {
            Some((w, b)) => layer_norm(&f(x)?, eps, Some((&f(w)?, &f(b)?)))?,
            None => layer_norm(&f(x)?, eps, None)?,
        };
        return y.to_dtype(x.dtype());
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    match affine {
        Some((w, b)) => y.broadcast_mul(w)?.broadcast_add(b),
        None => Ok(y),
    }
}

/// Nearest-neighbour 2× upsampling: `[b, c, h, w]` → `[b, c, 2h, 2w]`.
/// On the CPU a bf16 input goes through f32 (exact: a copy), as candle's backward of the
/// upsampling is a grouped convolution, which has no bf16 CPU kernel.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let _t = crate::profile::scope("upsample");
    if x.dtype() == DType::BF16 && x.device().is_cpu() {
        return upsample_nearest2x(&x.to_dtype(DType::F32)?)?.to_dtype(DType::BF16);
    }
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(2 * h, 2 * w)
}

/// Bytes of attention scores computed at once before queries are split into chunks.
const ATTENTION_CHUNK_BYTES: usize = 128 << 20;

/// Scaled dot-product attention, softmax(q kᵀ · scale) v, over `[b, heads, L, d]` tensors.
/// On the CPU in f32 our fused kernel runs it (`kernels::attention`: no score tensor, the
/// result a view of a `[b, L, heads, d]` buffer). Otherwise queries are processed in chunks so
/// the score matrix never exceeds ~128 MiB; the softmax is candle's composed one, which has a
/// backward (`softmax_last_dim` has none).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let _t = crate::profile::scope("attention (q·kᵀ, softmax, ·v)");
    attention_with_budget(q, k, v, scale, None, ATTENTION_CHUNK_BYTES)
}

/// [`attention`] with an additive bias on the scores, softmax(q kᵀ · scale + bias) v: a causal
/// mask, a padding mask (large negative where a key is masked, as transformers' `finfo.min`) or
/// both. `bias` broadcasts to `[b, heads, Lq, Lk]` (e.g. `[Lq, Lk]`, `[b, 1, 1, Lk]`,
/// `[b, 1, Lq, Lk]`); it is taken in the scores' dtype (f32 for bf16/f16 inputs).
pub fn attention_with_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: &Tensor,
) -> Result<Tensor> {
    let _t = crate::profile::scope("attention (q·kᵀ, softmax, ·v)");
    attention_with_budget(q, k, v, scale, Some(bias), ATTENTION_CHUNK_BYTES)
}

fn attention_with_budget(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    budget_bytes: usize,
) -> Result<Tensor> {
    let small_heads = q
        .dims()
        .last()
        .is_some_and(|&d| d <= kernels::attention::MAX_HEAD_DIM);
    if bias.is_none()
        && small_heads
        && use_kernels(q)
        && k.dtype() == DType::F32
        && v.dtype() == DType::F32
    {
        return kernels::attention::attention(q, k, v, scale);
    }
    let (b, h, l, _) = q.dims4()?;
    let kt = k.transpose(2, 3)?.contiguous()?; // [b, h, d, Lk]
    let lk = k.dim(2)?;
    // Low precision, as fused (flash) attention computes it: scores and softmax in f32 from
    // the bf16/f16 q and k, probabilities cast down for the product with v.
    let low = is_low_precision(q);
    let kt = if low { kt.to_dtype(DType::F32)? } else { kt };
    // The bias as [·, ·, Lq or 1, Lk] in the scores' dtype.
    let bias = match bias {
        None => None,
        Some(m) => {
            let mut m = m.to_dtype(kt.dtype())?;
            while m.rank() < 4 {
                m = m.unsqueeze(0)?;
            }
            if m.rank() > 4 || m.dim(3)? != lk || (m.dim(2)? != l && m.dim(2)? != 1) {
                candle_core::bail!(
                    "attention bias of shape {:?} does not broadcast to [{b}, {h}, {l}, {lk}]",
                    m.dims()
                );
            }
            Some(m)
        }
    };
    let per_query = b * h * lk * q.dtype().size_in_bytes().max(4);
    let chunk = (budget_bytes / per_query.max(1)).clamp(1, l);
    let one = |q: &Tensor, start: usize| -> Result<Tensor> {
        let lq = q.dim(2)?;
        let add_bias = |scores: Tensor| -> Result<Tensor> {
            match &bias {
                None => Ok(scores),
                Some(m) if m.dim(2)? == 1 || lq == l => scores.broadcast_add(m),
                Some(m) => scores.broadcast_add(&m.narrow(2, start, lq)?),
            }
        };
        if low {
            let scores = add_bias((q.to_dtype(DType::F32)?.contiguous()?.matmul(&kt)? * scale)?)?;
            let p = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
            return p.matmul(&v.contiguous()?);
        }
        let scores = add_bias((q.contiguous()?.matmul(&kt)? * scale)?)?; // [b, h, Lq, Lk]
        let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
        p.matmul(&v.contiguous()?)
    };
    if chunk >= l {
        return one(q, 0);
    }
    let parts = (0..l)
        .step_by(chunk)
        .map(|s| one(&q.narrow(2, s, chunk.min(l - s))?, s))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let s = (q.matmul(&k.transpose(2, 3).unwrap()).unwrap() * scale).unwrap();
        candle_nn::ops::softmax_last_dim(&s)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    #[test]
    fn linear_on_transposed_input_is_correct() {
        let dev = Device::Cpu;
        let vb = candle_nn::VarBuilder::from_varmap(
            &candle_nn::VarMap::new(),
            candle_core::DType::F32,
            &dev,
        );
        let l = candle_nn::linear(6, 5, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 6, 7), &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap(); // [2, 7, 6]
        let want = l.forward(&x.contiguous().unwrap()).unwrap();
        let got = linear(&x, &l).unwrap();
        let d: f32 = (want - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn layer_norm_matches_candle_and_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(1f32, 3.0, (2, 5, 12), &dev).unwrap()).unwrap();
        let w = Tensor::randn(1f32, 0.1, 12, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 12, &dev).unwrap();
        let want = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).unwrap();
        let got = layer_norm(&x, 1e-5, Some((&w, &b))).unwrap();
        let d: f32 = (want - &got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-5, "{d}");
        let loss = (got * x.as_tensor()).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(&x).expect("layer_norm must be differentiable");
        let n: f32 = gx.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(n.is_finite() && n > 0.0);
    }

    #[test]
    fn chunked_attention_equals_plain_and_has_gradients() {
        let dev = Device::Cpu;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 17, 8), &dev).unwrap()).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 17, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 17, 8), &dev).unwrap();
        let want = reference(&q, &k, &v, 0.3);
        let got = attention(&q, &k, &v, 0.3).unwrap();
        // A budget of 5 query rows' scores: 4 chunks of 5, 5, 5 and 2 queries.
        let chunked = attention_with_budget(&q, &k, &v, 0.3, None, 5 * 2 * 3 * 17 * 4).unwrap();
        for t in [&got, &chunked] {
            let d: f32 = (&want - t)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-5, "{d}");
        }
        let grads = got.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&q).is_some(), "attention must be differentiable");
    }

    #[test]
    fn biased_attention_masks_and_chunks() {
        let dev = Device::Cpu;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 7, 8), &dev).unwrap()).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 7, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 7, 8), &dev).unwrap();
        // Causal [L, L]: row i sees keys 0..=i.
        let causal: Vec<f32> = (0..7)
            .flat_map(|i| (0..7).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let causal = Tensor::from_vec(causal, (7, 7), &dev).unwrap();
        let got = attention_with_bias(&q, &k, &v, 0.3, &causal).unwrap();
        let chunked =
            attention_with_budget(&q, &k, &v, 0.3, Some(&causal), 2 * 2 * 3 * 7 * 4).unwrap();
        // Reference: row i of the output is plain attention over the first i + 1 keys.
        for i in [0usize, 3, 6] {
            let want = reference(
                &q.narrow(2, i, 1).unwrap(),
                &k.narrow(2, 0, i + 1).unwrap(),
                &v.narrow(2, 0, i + 1).unwrap(),
                0.3,
            );
            for t in [&got, &chunked] {
                let d: f32 = (&want - t.narrow(2, i, 1).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(d < 1e-5, "row {i}: {d}");
            }
        }
        let grads = got.sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(&q).is_some(),
            "biased attention must be differentiable"
        );
        let bad = Tensor::zeros((7, 6), DType::F32, &dev).unwrap();
        assert!(attention_with_bias(&q, &k, &v, 0.3, &bad).is_err());
    }
}

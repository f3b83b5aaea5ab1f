//! Spatial self-attention of the UNet (diffusers `Attention` with `AttnProcessor2_0`,
//! `residual_connection=True`, as built by `AttnDownBlock2D` and friends), and the DiT's
//! attention (self and cross) over token sequences.

use crate::ops;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Multi-head self-attention over the h·w positions of a feature map.
#[derive(Debug, Clone)]
pub struct SpatialAttention {
    pub(crate) group_norm: Option<ops::GroupNorm>,
    pub(crate) to_q: candle_nn::Linear,
    pub(crate) to_k: candle_nn::Linear,
    pub(crate) to_v: candle_nn::Linear,
    pub(crate) to_out: candle_nn::Linear,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) rescale_output_factor: f64,
}

impl SpatialAttention {
    /// `heads = channels / head_dim` as diffusers computes it; `groups` None means no norm.
    pub fn new(
        channels: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f64,
        rescale_output_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let heads = (channels / head_dim).max(1);
        let inner = heads * head_dim;
        let group_norm = match groups {
            Some(g) => Some(ops::GroupNorm::new(g, channels, eps, vb.pp("group_norm"))?),
            None => None,
        };
        Ok(SpatialAttention {
            group_norm,
            to_q: candle_nn::linear(channels, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, channels, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
            rescale_output_factor,
        })
    }

    /// `x`: [b, c, h, w] → same shape, residual included.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let l = h * w;
        let normed = match &self.group_norm {
            Some(n) => ops::group_norm(x, n, false)?,
            None => x.clone(),
        };
        // [b, L, c], made contiguous once here rather than by each of the three projections
        // (`ops::linear` copies a transposed input, see there).
        let seq = normed.reshape((b, c, l))?.transpose(1, 2)?.contiguous()?;
        let split = |t: Tensor| -> Result<Tensor> {
            // [b, L, heads·d] → [b, heads, L, d]
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(ops::linear(&seq, &self.to_q)?)?;
        let k = split(ops::linear(&seq, &self.to_k)?)?;
        let v = split(ops::linear(&seq, &self.to_v)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = ops::attention(&q, &k, &v, scale)?; // [b, heads, L, d]
        let o = o
            .transpose(1, 2)?
            .reshape((b, l, self.heads * self.head_dim))?;
        let o = ops::linear(&o, &self.to_out)?; // [b, L, c]
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        let out = (o + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.rescale_output_factor
        }
    }
}

/// Multi-head attention over a token sequence `[b, L, dim]` (diffusers `Attention` as
/// `BasicTransformerBlock` builds it: no norm, no residual; `to_q/k/v` biased when `bias`,
/// `to_out.0` always biased). Self-attention (`attn1`), or cross-attention (`attn2`) whose keys
/// and values come from a context of `context_dim` channels (a text encoder's hidden states).
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) to_q: candle_nn::Linear,
    pub(crate) to_k: candle_nn::Linear,
    pub(crate) to_v: candle_nn::Linear,
    pub(crate) to_out: candle_nn::Linear,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
}

impl Attention {
    /// Self-attention over `dim` channels.
    pub fn new(
        dim: usize,
        heads: usize,
        head_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::cross(dim, dim, heads, head_dim, bias, vb)
    }

    /// Queries from `dim` channels, keys and values from `context_dim` channels.
    pub fn cross(
        dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Attention {
            to_q: candle_nn::linear_b(dim, inner, bias, vb.pp("to_q"))?,
            to_k: candle_nn::linear_b(context_dim, inner, bias, vb.pp("to_k"))?,
            to_v: candle_nn::linear_b(context_dim, inner, bias, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, dim, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
        })
    }

    /// `x`: [b, L, dim] → [b, L, dim]; self-attention.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_context(x, x)
    }

    /// `x`: [b, L, dim], `context`: [b, Lc, context_dim] → [b, L, dim].
    pub fn forward_context(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let split = |t: Tensor| -> Result<Tensor> {
            // [b, L, heads·d] → [b, heads, L, d]
            let l = t.dim(1)?;
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(ops::linear(x, &self.to_q)?)?;
        let k = split(ops::linear(context, &self.to_k)?)?;
        let v = split(ops::linear(context, &self.to_v)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let l = x.dim(1)?;
        let o = ops::attention(&q, &k, &v, scale)?
            .transpose(1, 2)?
            .reshape((b, l, self.heads * self.head_dim))?;
        ops::linear(&o, &self.to_out)
    }
}

//! The cross-attention blocks of `UNet2DConditionModel`: diffusers `Transformer2DModel` on a
//! continuous feature map (`models/transformers/transformer_2d.py`) and its
//! `BasicTransformerBlock` with `norm_type = "layer_norm"`, `FeedForward` and `GEGLU`
//! (`models/attention.py`), the "spatial transformer" of Stable Diffusion (Rombach et al. 2022).
//!
//! GroupNorm (eps 1e-6) → `proj_in` (1×1 conv, or a linear with `use_linear_projection`) →
//! blocks of [LayerNorm → self-attention, LayerNorm → cross-attention over the text states,
//! LayerNorm → GEGLU feed-forward], each with a residual → `proj_out` → + input.
//! `upcast_attention` asks for f32 scores; here they are f32 already (f32 weights), and the
//! low-precision path of [`ops::attention`] computes them in f32 as well.

use crate::attention::Attention;
use crate::ops;
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// eps of the GroupNorm before `proj_in` (fixed in diffusers' UNet blocks).
const GROUP_NORM_EPS: f64 = 1e-6;
/// eps of the blocks' LayerNorms (`Transformer2DModel`'s `norm_eps` default).
pub(crate) const LAYER_NORM_EPS: f64 = 1e-5;
/// `FeedForward`'s `mult`: the GEGLU inner width is 4 · dim.
const FF_MULT: usize = 4;

/// The shape of one `Transformer2DModel`, as `CrossAttnDownBlock2D` and friends build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerSpec {
    pub heads: usize,
    pub head_dim: usize,
    /// `transformer_layers_per_block`.
    pub layers: usize,
    pub cross_attention_dim: usize,
    /// `use_linear_projection`: linear `proj_in`/`proj_out` instead of 1×1 convs.
    pub linear_projection: bool,
    /// GroupNorm groups (the UNet's `norm_num_groups`).
    pub groups: usize,
}

/// `proj_in` / `proj_out`.
#[derive(Debug, Clone)]
pub(crate) enum Projection {
    Conv(candle_nn::Conv2d),
    Linear(candle_nn::Linear),
}

impl Projection {
    fn new(linear: bool, cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(candle_nn::linear(cin, cout, vb)?)
        } else {
            Projection::Conv(candle_nn::conv2d(cin, cout, 1, Default::default(), vb)?)
        })
    }
}

/// LayerNorm weights (elementwise affine).
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl LayerNorm {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, LAYER_NORM_EPS, Some((&self.weight, &self.bias)))
    }
}

/// `BasicTransformerBlock` (layer_norm): self-attention, cross-attention, GEGLU feed-forward.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn1: Attention,
    pub(crate) norm2: LayerNorm,
    pub(crate) attn2: Attention,
    pub(crate) norm3: LayerNorm,
    /// `ff.net.0.proj`: dim → 2 · inner (value and gate halves).
    pub(crate) ff_in: candle_nn::Linear,
    /// `ff.net.2`: inner → dim.
    pub(crate) ff_out: candle_nn::Linear,
}

impl BasicTransformerBlock {
    pub fn new(dim: usize, spec: &TransformerSpec, vb: VarBuilder) -> Result<Self> {
        let inner = FF_MULT * dim;
        let ff = vb.pp("ff").pp("net");
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::new(dim, vb.pp("norm1"))?,
            attn1: Attention::new(dim, spec.heads, spec.head_dim, false, vb.pp("attn1"))?,
            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
            attn2: Attention::cross(
                dim,
                spec.cross_attention_dim,
                spec.heads,
                spec.head_dim,
                false,
                vb.pp("attn2"),
            )?,
            norm3: LayerNorm::new(dim, vb.pp("norm3"))?,
            ff_in: candle_nn::linear(dim, 2 * inner, ff.pp("0").pp("proj"))?,
            ff_out: candle_nn::linear(inner, dim, ff.pp("2"))?,
        })
    }

    /// `x`: [b, L, dim], `context`: [b, Lc, cross_attention_dim] → [b, L, dim].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let h = (self.attn1.forward(&self.norm1.forward(x)?)? + x)?;
        let h = (self
            .attn2
            .forward_context(&self.norm2.forward(&h)?, context)?
            + &h)?;
        let ff = ops::linear(&self.norm3.forward(&h)?, &self.ff_in)?; // [b, L, 2·inner]
        let inner = ff.dim(2)? / 2;
        // GEGLU: value · gelu(gate), the exact (erf) GELU as torch's F.gelu.
        let gated = (ff.narrow(2, 0, inner)? * ff.narrow(2, inner, inner)?.gelu_erf()?)?;
        ops::linear(&gated, &self.ff_out)? + h
    }
}

/// `Transformer2DModel` over a feature map `[b, c, h, w]`, conditioned on a context.
#[derive(Debug, Clone)]
pub struct Transformer2D {
    pub(crate) norm: ops::GroupNorm,
    pub(crate) proj_in: Projection,
    pub(crate) blocks: Vec<BasicTransformerBlock>,
    pub(crate) proj_out: Projection,
}

impl Transformer2D {
    pub fn new(channels: usize, spec: &TransformerSpec, vb: VarBuilder) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        let blocks = (0..spec.layers)
            .map(|i| BasicTransformerBlock::new(inner, spec, vb.pp("transformer_blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2D {
            norm: ops::GroupNorm::new(spec.groups, channels, GROUP_NORM_EPS, vb.pp("norm"))?,
            proj_in: Projection::new(spec.linear_projection, channels, inner, vb.pp("proj_in"))?,
            blocks,
            proj_out: Projection::new(spec.linear_projection, inner, channels, vb.pp("proj_out"))?,
        })
    }

    /// `x`: [b, c, h, w], `context`: [b, Lc, cross_attention_dim] → [b, c, h, w], residual
    /// included.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let l = hh * ww;
        let normed = ops::group_norm(x, &self.norm, false)?;
        // [b, c', h, w] → [b, h·w, c']
        let to_seq = |t: &Tensor| -> Result<Tensor> {
            let ci = t.dim(1)?;
            t.reshape((b, ci, l))?.transpose(1, 2)
        };
        let mut h = match &self.proj_in {
            Projection::Conv(conv) => to_seq(&ops::conv2d(&normed, conv)?)?,
            Projection::Linear(lin) => ops::linear(&to_seq(&normed)?, lin)?,
        };
        for blk in &self.blocks {
            h = blk.forward(&h, context)?;
        }
        // [b, h·w, c'] → [b, c', h, w]
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let ci = t.dim(2)?;
            t.transpose(1, 2)?.contiguous()?.reshape((b, ci, hh, ww))
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => ops::conv2d(&to_map(&h)?, conv)?,
            Projection::Linear(lin) => to_map(&ops::linear(&h, lin)?)?,
        };
        debug_assert_eq!(out.dim(1)?, c);
        out + x
    }
}

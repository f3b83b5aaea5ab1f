//! UNet blocks, diffusers `models/unets/unet_2d_blocks.py`: `DownBlock2D`, `AttnDownBlock2D`,
//! `ResnetDownsampleBlock2D`, their up twins, `UNetMidBlock2D`, the VAE's
//! `DownEncoderBlock2D` / `UpDecoderBlock2D` (no time embedding, no skip connections), and
//! `UNet2DConditionModel`'s `CrossAttnDownBlock2D` / `CrossAttnUpBlock2D` /
//! `UNetMidBlock2DCrossAttn` (a [`Transformer2D`] after each ResNet). One struct per direction:
//! the types differ only in which attention follows each ResNet, how they resample and whether
//! up blocks take skips.

use crate::attention::SpatialAttention;
use crate::checkpoint::{checkpoint, checkpoint2};
use crate::config::ResampleType;
use crate::resnet::{Downsample2D, Resample, ResnetBlock2D, ResnetOptions, Upsample2D};
use crate::transformer_2d::{Transformer2D, TransformerSpec};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A ResNet's forward, recomputed in backward when `ckpt` (gradient checkpointing).
fn resnet(ckpt: bool, r: &ResnetBlock2D, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
    if !ckpt {
        return r.forward(x, temb);
    }
    let r = r.clone();
    checkpoint(x, temb, move |x, t| r.forward(x, t))
}

/// A ResNet over `cat(h, skip)` (up blocks); checkpointed, the concatenation is not kept
/// either.
fn resnet_skip(
    ckpt: bool,
    r: &ResnetBlock2D,
    h: &Tensor,
    skip: &Tensor,
    temb: Option<&Tensor>,
) -> Result<Tensor> {
    if !ckpt {
        return r.forward(&Tensor::cat(&[h, skip], 1)?, temb); // [b, c + c_skip, h, w]
    }
    let r = r.clone();
    checkpoint2(h, skip, temb, move |h, s, t| {
        r.forward(&Tensor::cat(&[h, s], 1)?, t)
    })
}

/// The attention after a ResNet: the UNet's spatial self-attention, or a cross-attention
/// transformer over a context (the text encoder's hidden states).
#[derive(Debug, Clone)]
pub(crate) enum BlockAttention {
    Spatial(SpatialAttention),
    Transformer(Transformer2D),
}

impl BlockAttention {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        match (self, context) {
            (BlockAttention::Spatial(a), _) => a.forward(x),
            (BlockAttention::Transformer(t), Some(c)) => t.forward(x, c),
            (BlockAttention::Transformer(_), None) => candle_core::bail!(
                "a cross-attention block needs encoder hidden states (prompt embeddings)"
            ),
        }
    }
}

/// An attention's forward, recomputed in backward when `ckpt` (the context's gradient, e.g. to
/// a jointly trained text encoder, included).
fn attention(
    ckpt: bool,
    a: &BlockAttention,
    x: &Tensor,
    context: Option<&Tensor>,
) -> Result<Tensor> {
    if !ckpt {
        return a.forward(x, context);
    }
    let a = a.clone();
    checkpoint(x, context, move |x, c| a.forward(x, c))
}

#[derive(Debug, Clone)]
pub(crate) enum Down {
    Conv(Downsample2D),
    Resnet(Box<ResnetBlock2D>),
}

#[derive(Debug, Clone)]
pub(crate) enum Up {
    Conv(Upsample2D),
    Resnet(Box<ResnetBlock2D>),
}

/// Shape of one down or up block, as the model's config lays it out.
pub struct BlockSpec<'a> {
    pub num_layers: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Up blocks: channels coming from the block below.
    pub prev_output_channels: usize,
    /// Whether self-attention follows each ResNet (the Attn blocks).
    pub attention: bool,
    /// A cross-attention transformer after each ResNet instead (the CrossAttn blocks).
    pub transformer: Option<TransformerSpec>,
    /// How the block changes resolution; None for the last down / last up block.
    pub resampler: Option<ResampleType>,
    /// Up blocks: whether the ResNets take the down path's skip states (all but the VAE's
    /// `UpDecoderBlock2D`).
    pub takes_skips: bool,
    pub downsample_padding: usize,
    pub attention_head_dim: Option<usize>,
    /// Inner widths of pruned ResNets (`crate::prune`): entry i for the i-th ResNet, entry
    /// `num_layers` for the resampling one; missing entries (an empty slice: unpruned) are
    /// `out_channels`.
    pub resnet_inner: &'a [usize],
}

impl BlockSpec<'_> {
    /// The inner width of ResNet `i` (`num_layers`: the resampling ResNet).
    fn inner(&self, i: usize) -> usize {
        self.resnet_inner
            .get(i)
            .copied()
            .unwrap_or(self.out_channels)
    }

    /// The self-attention after each ResNet of an Attn block (one head per `attention_head_dim`
    /// channels, all channels when it is null).
    fn attention_layer(
        &self,
        opts: ResnetOptions,
        vb: VarBuilder,
    ) -> Result<Option<BlockAttention>> {
        if let Some(t) = &self.transformer {
            return Ok(Some(BlockAttention::Transformer(Transformer2D::new(
                self.out_channels,
                t,
                vb,
            )?)));
        }
        if !self.attention {
            return Ok(None);
        }
        Ok(Some(BlockAttention::Spatial(SpatialAttention::new(
            self.out_channels,
            self.attention_head_dim.unwrap_or(self.out_channels),
            Some(opts.groups),
            opts.eps,
            1.0,
            vb,
        )?)))
    }
}

/// A down block: ResNets (each optionally followed by attention), then a downsampler.
#[derive(Debug, Clone)]
pub struct DownBlock {
    pub(crate) resnets: Vec<ResnetBlock2D>,
    pub(crate) attentions: Vec<BlockAttention>,
    pub(crate) down: Option<Down>,
    gradient_checkpointing: bool,
}

impl DownBlock {
    pub fn new(spec: &BlockSpec, opts: ResnetOptions, vb: VarBuilder) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..spec.num_layers {
            let cin = if i == 0 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            resnets.push(ResnetBlock2D::with_inner(
                cin,
                spec.inner(i),
                spec.out_channels,
                opts,
                Resample::None,
                vb.pp("resnets").pp(i),
            )?);
            if let Some(a) = spec.attention_layer(opts, vb.pp("attentions").pp(i))? {
                attentions.push(a);
            }
        }
        let vbd = vb.pp("downsamplers").pp(0);
        let down = match spec.resampler {
            None => None,
            Some(ResampleType::Resnet) => Some(Down::Resnet(Box::new(ResnetBlock2D::with_inner(
                spec.out_channels,
                spec.inner(spec.num_layers),
                spec.out_channels,
                opts,
                Resample::Down,
                vbd,
            )?))),
            Some(ResampleType::Conv) => Some(Down::Conv(Downsample2D::new(
                spec.out_channels,
                spec.downsample_padding,
                vbd,
            )?)),
        };
        Ok(DownBlock {
            resnets,
            attentions,
            down,
            gradient_checkpointing: false,
        })
    }

    /// Returns the output and the skip states it leaves for the up path.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<(Tensor, Vec<Tensor>)> {
        self.forward_context(x, temb, None)
    }

    /// [`Self::forward`] with the context of cross-attention blocks.
    pub fn forward_context(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let ck = self.gradient_checkpointing;
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, r) in self.resnets.iter().enumerate() {
            h = resnet(ck, r, &h, temb)?;
            if let Some(a) = self.attentions.get(i) {
                h = attention(ck, a, &h, context)?;
            }
            states.push(h.clone());
        }
        if let Some(d) = &self.down {
            h = match d {
                Down::Conv(c) if ck => {
                    let c = c.clone();
                    checkpoint(&h, None, move |x, _| c.forward(x))?
                }
                Down::Conv(c) => c.forward(&h)?,
                Down::Resnet(r) => resnet(ck, r, &h, temb)?,
            };
            states.push(h.clone());
        }
        Ok((h, states))
    }

    /// Recompute each ResNet, attention and downsampler in backward instead of keeping its
    /// activations (diffusers' `gradient_checkpointing`).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }

    /// How many skip states this block leaves.
    pub fn num_states(&self) -> usize {
        self.resnets.len() + usize::from(self.down.is_some())
    }
}

/// An up block: ResNets over [h, skip] (each optionally followed by attention), then an upsampler.
/// `UpDecoderBlock2D` takes no skips: its ResNets see h alone.
#[derive(Debug, Clone)]
pub struct UpBlock {
    pub(crate) resnets: Vec<ResnetBlock2D>,
    pub(crate) attentions: Vec<BlockAttention>,
    pub(crate) up: Option<Up>,
    pub(crate) takes_skips: bool,
    gradient_checkpointing: bool,
}

impl UpBlock {
    pub fn new(spec: &BlockSpec, opts: ResnetOptions, vb: VarBuilder) -> Result<Self> {
        let takes_skips = spec.takes_skips;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..spec.num_layers {
            let skip = if !takes_skips {
                0
            } else if i == spec.num_layers - 1 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            let cin = if i == 0 {
                spec.prev_output_channels
            } else {
                spec.out_channels
            };
            resnets.push(ResnetBlock2D::with_inner(
                cin + skip,
                spec.inner(i),
                spec.out_channels,
                opts,
                Resample::None,
                vb.pp("resnets").pp(i),
            )?);
            if let Some(a) = spec.attention_layer(opts, vb.pp("attentions").pp(i))? {
                attentions.push(a);
            }
        }
        let vbu = vb.pp("upsamplers").pp(0);
        let up = match spec.resampler {
            None => None,
            Some(ResampleType::Resnet) => Some(Up::Resnet(Box::new(ResnetBlock2D::with_inner(
                spec.out_channels,
                spec.inner(spec.num_layers),
                spec.out_channels,
                opts,
                Resample::Up,
                vbu,
            )?))),
            Some(ResampleType::Conv) => Some(Up::Conv(Upsample2D::new(spec.out_channels, vbu)?)),
        };
        Ok(UpBlock {
            resnets,
            attentions,
            up,
            takes_skips,
            gradient_checkpointing: false,
        })
    }

    /// Number of skip states this block consumes.
    pub fn num_states(&self) -> usize {
        if self.takes_skips {
            self.resnets.len()
        } else {
            0
        }
    }

    /// `skips`: this block's skip states, in the order they were produced (the last is used first).
    pub fn forward(&self, x: &Tensor, skips: &[Tensor], temb: Option<&Tensor>) -> Result<Tensor> {
        self.forward_context(x, skips, temb, None)
    }

    /// [`Self::forward`] with the context of cross-attention blocks.
    pub fn forward_context(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_sized(x, skips, temb, context, None)
    }

    /// [`Self::forward_context`], a conv upsampler resizing to `upsample_to` instead of 2× when
    /// given (inputs that are not a multiple of the overall downscale).
    pub fn forward_sized(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
        upsample_to: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let ck = self.gradient_checkpointing;
        let mut h = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            h = if self.takes_skips {
                resnet_skip(ck, r, &h, &skips[skips.len() - 1 - i], temb)?
            } else {
                resnet(ck, r, &h, temb)?
            };
            if let Some(a) = self.attentions.get(i) {
                h = attention(ck, a, &h, context)?;
            }
        }
        if let Some(u) = &self.up {
            h = match u {
                Up::Conv(c) if ck => {
                    let c = c.clone();
                    checkpoint(&h, None, move |x, _| match upsample_to {
                        Some(size) => c.forward_to(x, size),
                        None => c.forward(x),
                    })?
                }
                Up::Conv(c) => match upsample_to {
                    Some(size) => c.forward_to(&h, size)?,
                    None => c.forward(&h)?,
                },
                Up::Resnet(r) => resnet(ck, r, &h, temb)?,
            };
        }
        Ok(h)
    }

    /// Recompute each ResNet, attention and upsampler in backward instead of keeping its
    /// activations (diffusers' `gradient_checkpointing`).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }
}

/// `UNetMidBlock2D` (or `UNetMidBlock2DCrossAttn`) with one layer: ResNet → attention →
/// ResNet.
#[derive(Debug, Clone)]
pub struct MidBlock {
    pub(crate) resnets: Vec<ResnetBlock2D>,
    pub(crate) attention: Option<BlockAttention>,
    gradient_checkpointing: bool,
}

impl MidBlock {
    pub fn new(
        channels: usize,
        opts: ResnetOptions,
        attention: Option<(usize, Option<usize>)>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::with_inner(channels, [channels; 2], opts, attention, vb)
    }

    /// With the inner widths of its two ResNets (pruned blocks, `crate::prune`).
    pub fn with_inner(
        channels: usize,
        inner: [usize; 2],
        opts: ResnetOptions,
        attention: Option<(usize, Option<usize>)>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let attention = match attention {
            Some((head_dim, groups)) => Some(BlockAttention::Spatial(SpatialAttention::new(
                channels,
                head_dim,
                groups,
                opts.eps,
                opts.output_scale_factor,
                vb.pp("attentions").pp(0),
            )?)),
            None => None,
        };
        Self::assemble(channels, inner, opts, attention, vb)
    }

    /// `UNetMidBlock2DCrossAttn` with one layer: ResNet → cross-attention transformer → ResNet.
    pub fn cross_attn(
        channels: usize,
        opts: ResnetOptions,
        spec: &TransformerSpec,
        vb: VarBuilder,
    ) -> Result<Self> {
        let t = Transformer2D::new(channels, spec, vb.pp("attentions").pp(0))?;
        Self::assemble(
            channels,
            [channels; 2],
            opts,
            Some(BlockAttention::Transformer(t)),
            vb,
        )
    }

    fn assemble(
        channels: usize,
        inner: [usize; 2],
        opts: ResnetOptions,
        attention: Option<BlockAttention>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let r0 = ResnetBlock2D::with_inner(
            channels,
            inner[0],
            channels,
            opts,
            Resample::None,
            vb.pp("resnets").pp(0),
        )?;
        let r1 = ResnetBlock2D::with_inner(
            channels,
            inner[1],
            channels,
            opts,
            Resample::None,
            vb.pp("resnets").pp(1),
        )?;
        Ok(MidBlock {
            resnets: vec![r0, r1],
            attention,
            gradient_checkpointing: false,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        self.forward_context(x, temb, None)
    }

    /// [`Self::forward`] with the context of a cross-attention mid block.
    pub fn forward_context(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ck = self.gradient_checkpointing;
        let mut h = resnet(ck, &self.resnets[0], x, temb)?;
        if let Some(a) = &self.attention {
            h = attention(ck, a, &h, context)?;
        }
        resnet(ck, &self.resnets[1], &h, temb)
    }

    /// Recompute each ResNet and the attention in backward instead of keeping their activations.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }
}

//! `UNet2DModel`, diffusers `models/unets/unet_2d.py`: the pixel-space diffusion UNet of DDPM
//! and the diffusers tutorials, with diffusers' weight names. A pruned config
//! (`diffuse_resnet_inner_channels`, `crate::prune`) narrows the inside of ResNet blocks.

use crate::blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
use crate::config::{
    ClassEmbedding, MidBlockType, ResnetTimeScaleShift, TimeEmbeddingType, UNet2DConfig,
};
use crate::embeddings::{TimeProjection, TimestepEmbedding};
use crate::ops;
use crate::resnet::{ResnetOptions, TimeNorm};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub(crate) enum ClassEmb {
    None,
    Table(candle_nn::Embedding),
    Timestep(TimestepEmbedding),
    Identity,
}

/// The diffusers `UNet2DModel`.
#[derive(Debug, Clone)]
pub struct UNet2DModel {
    pub(crate) config: UNet2DConfig,
    pub(crate) conv_in: candle_nn::Conv2d,
    pub(crate) time_proj: TimeProjection,
    pub(crate) time_embedding: TimestepEmbedding,
    pub(crate) class_embedding: ClassEmb,
    pub(crate) down_blocks: Vec<DownBlock>,
    pub(crate) mid_block: Option<MidBlock>,
    pub(crate) up_blocks: Vec<UpBlock>,
    pub(crate) conv_norm_out: ops::GroupNorm,
    pub(crate) conv_out: candle_nn::Conv2d,
    gradient_checkpointing: bool,
}

impl UNet2DModel {
    /// Builds the network; weights come from `vb` under diffusers' names.
    pub fn new(config: &UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let temb_dim = c.time_embed_dim();
        let conv3 = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = candle_nn::conv2d(c.in_channels, ch[0], 3, conv3, vb.pp("conv_in"))?;
        let (time_proj, time_in) = match c.time_embedding_type {
            TimeEmbeddingType::Fourier => (
                TimeProjection::Fourier {
                    weight: vb.pp("time_proj").get_with_hints(
                        ch[0],
                        "weight",
                        candle_nn::Init::Randn {
                            mean: 0.0,
                            stdev: 16.0,
                        },
                    )?,
                },
                2 * ch[0],
            ),
            TimeEmbeddingType::Learned => (
                TimeProjection::Learned {
                    table: candle_nn::embedding(
                        c.num_train_timesteps.expect("validated"),
                        ch[0],
                        vb.pp("time_proj"),
                    )?,
                },
                ch[0],
            ),
            TimeEmbeddingType::Positional => (
                TimeProjection::Positional {
                    dim: ch[0],
                    flip_sin_to_cos: c.flip_sin_to_cos,
                    freq_shift: c.freq_shift,
                },
                ch[0],
            ),
        };
        let time_embedding = TimestepEmbedding::new(time_in, temb_dim, vb.pp("time_embedding"))?;
        let class_embedding = match c.class_embedding() {
            ClassEmbedding::None => ClassEmb::None,
            ClassEmbedding::Table(k) => {
                ClassEmb::Table(candle_nn::embedding(k, temb_dim, vb.pp("class_embedding"))?)
            }
            ClassEmbedding::Timestep => ClassEmb::Timestep(TimestepEmbedding::new(
                time_in,
                temb_dim,
                vb.pp("class_embedding"),
            )?),
            ClassEmbedding::Identity => ClassEmb::Identity,
        };
        let time_norm = match c.resnet_time_scale_shift {
            ResnetTimeScaleShift::Default => TimeNorm::Default,
            ResnetTimeScaleShift::ScaleShift => TimeNorm::ScaleShift,
        };
        let opts = ResnetOptions {
            groups: c.norm_num_groups,
            eps: c.norm_eps,
            temb_channels: Some(temb_dim),
            time_norm,
            output_scale_factor: 1.0,
        };

        // Inner widths of (pruned) ResNets: the block's ResNets, then its resampling one.
        let inner = |block: &str, layers: usize, resampler: &str, out: usize| -> Vec<usize> {
            (0..layers)
                .map(|j| c.resnet_inner(&format!("{block}.resnets.{j}"), out))
                .chain([c.resnet_inner(&format!("{block}.{resampler}.0"), out)])
                .collect()
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut out = ch[0];
        for (i, t) in c.down_block_types.iter().enumerate() {
            let input = out;
            out = ch[i];
            let widths = inner(
                &format!("down_blocks.{i}"),
                c.layers_per_block,
                "downsamplers",
                out,
            );
            let spec = BlockSpec {
                num_layers: c.layers_per_block,
                in_channels: input,
                out_channels: out,
                prev_output_channels: 0,
                attention: t.has_attention(),
                transformer: None,
                resampler: (i != n - 1).then(|| t.resampler(c.downsample_type)),
                takes_skips: false,
                downsample_padding: c.downsample_padding,
                attention_head_dim: c.attention_head_dim,
                resnet_inner: &widths,
            };
            down_blocks.push(DownBlock::new(&spec, opts, vb.pp("down_blocks").pp(i))?);
        }
        let mid_block = match c.mid_block_type {
            Some(MidBlockType::UNetMidBlock2D) => {
                let last = ch[n - 1];
                let groups = c.attn_norm_num_groups.or(match time_norm {
                    TimeNorm::Default => Some(c.norm_num_groups),
                    TimeNorm::ScaleShift => None,
                });
                let attention = c
                    .add_attention
                    .then(|| (c.attention_head_dim.unwrap_or(last), groups));
                let mid_opts = ResnetOptions {
                    output_scale_factor: c.mid_block_scale_factor,
                    ..opts
                };
                Some(MidBlock::with_inner(
                    last,
                    [0, 1].map(|j| c.resnet_inner(&format!("mid_block.resnets.{j}"), last)),
                    mid_opts,
                    attention,
                    vb.pp("mid_block"),
                )?)
            }
            None => None,
        };
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out = rev[0];
        for (i, t) in c.up_block_types.iter().enumerate() {
            let prev = out;
            out = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let widths = inner(
                &format!("up_blocks.{i}"),
                c.layers_per_block + 1,
                "upsamplers",
                out,
            );
            let spec = BlockSpec {
                num_layers: c.layers_per_block + 1,
                in_channels: input,
                out_channels: out,
                prev_output_channels: prev,
                attention: t.has_attention(),
                transformer: None,
                resampler: (i != n - 1).then(|| t.resampler(c.upsample_type)),
                takes_skips: true,
                downsample_padding: c.downsample_padding,
                attention_head_dim: c.attention_head_dim,
                resnet_inner: &widths,
            };
            up_blocks.push(UpBlock::new(&spec, opts, vb.pp("up_blocks").pp(i))?);
        }
        let conv_norm_out =
            ops::GroupNorm::new(c.norm_num_groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = candle_nn::conv2d(ch[0], c.out_channels, 3, conv3, vb.pp("conv_out"))?;
        Ok(UNet2DModel {
            config: c.clone(),
            conv_in,
            time_proj,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            gradient_checkpointing: false,
        })
    }

    /// diffusers' `enable_gradient_checkpointing()` / `disable_…`: every ResNet, attention and
    /// resampler of the down, mid and up blocks recomputes its activations in backward instead
    /// of keeping them ([`crate::checkpoint`]). Same outputs and gradients; less memory, one more
    /// forward of those blocks per backward.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
        for d in &mut self.down_blocks {
            d.set_gradient_checkpointing(on);
        }
        if let Some(m) = &mut self.mid_block {
            m.set_gradient_checkpointing(on);
        }
        for u in &mut self.up_blocks {
            u.set_gradient_checkpointing(on);
        }
    }

    pub fn gradient_checkpointing(&self) -> bool {
        self.gradient_checkpointing
    }

    /// The dtype of the weights (f32 unless built low-precision, e.g. by
    /// [`crate::precision::from_tensors_as`]).
    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }

    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// Whether the model needs class labels.
    pub fn is_class_conditional(&self) -> bool {
        !matches!(self.class_embedding, ClassEmb::None)
    }

    /// Height and width must divide by this (2 per downsampling block).
    pub fn size_multiple(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// `sample`: [b, in_channels, h, w]; `timesteps`: b values (or one, broadcast);
    /// `class_labels`: `[b]` integer labels or `[b, classes]` weights over them (table; see
    /// [`soft_embedding`]), `[b]` numbers (timestep type) or [b, time_embed_dim] (identity).
    /// Returns [b, out_channels, h, w].
    /// Runs on rayon's pool (see [`crate::kernels::on_pool`]).
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        crate::kernels::on_pool(|| self.forward_here(sample, timesteps, class_labels))
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, c_in, h, w) = sample.dims4()?;
        if c_in != self.config.in_channels {
            return Err(Error::Input(format!(
                "sample has {c_in} channels, the model takes {}",
                self.config.in_channels
            )));
        }
        let m = self.size_multiple();
        if h % m != 0 || w % m != 0 {
            return Err(Error::Input(format!(
                "sample size {h}×{w} must be a multiple of {m} for {} resolution levels",
                self.config.block_out_channels.len()
            )));
        }
        let ts: Vec<f32> = match timesteps.len() {
            1 => vec![timesteps[0]; b],
            k if k == b => timesteps.to_vec(),
            k => return Err(Error::Input(format!("{k} timesteps for a batch of {b}"))),
        };
        let dev = sample.device();
        let dtype = sample.dtype();
        let x = if self.config.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };

        let t_emb = self.time_proj.forward(&ts, dev)?.to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?; // [b, temb]
        match (&self.class_embedding, class_labels) {
            (ClassEmb::None, None) => {}
            (ClassEmb::None, Some(_)) => {
                return Err(Error::Input(
                    "class labels given to a model without class conditioning".into(),
                ))
            }
            (_, None) => {
                return Err(Error::Input(
                    "this model is class-conditional: class labels are required".into(),
                ))
            }
            // Soft labels: weights over the classes mix their embeddings (interpolation).
            (ClassEmb::Table(t), Some(l)) if l.rank() == 2 => {
                emb = (emb + soft_embedding(t, l, b)?.to_dtype(dtype)?)?;
            }
            (ClassEmb::Table(t), Some(l)) => {
                let l = l.to_dtype(DType::U32)?;
                let k = t.embeddings().dim(0)?;
                let max = l.max_all()?.to_scalar::<u32>()? as usize;
                if max >= k {
                    return Err(Error::Input(format!(
                        "class label {max} out of range: the model has {k} classes"
                    )));
                }
                emb = (emb + candle_nn::Module::forward(t, &l)?.to_dtype(dtype)?)?;
            }
            (ClassEmb::Timestep(te), Some(l)) => {
                let v: Vec<f32> = l.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let p = self.time_proj.forward(&v, dev)?.to_dtype(dtype)?;
                emb = (emb + te.forward(&p)?)?;
            }
            (ClassEmb::Identity, Some(l)) => emb = (emb + l.to_dtype(dtype)?)?,
        }
        let temb = Some(&emb);

        let mut h = ops::conv2d(&x, &self.conv_in)?;
        let mut skips = vec![h.clone()];
        for d in &self.down_blocks {
            let (o, states) = d.forward(&h, temb)?;
            h = o;
            skips.extend(states);
        }
        if let Some(m) = &self.mid_block {
            h = m.forward(&h, temb)?;
        }
        for u in &self.up_blocks {
            let k = u.num_states();
            let mine = skips.split_off(skips.len() - k);
            h = u.forward(&h, &mine, temb)?;
        }
        h = ops::group_norm(&h, &self.conv_norm_out, true)?;
        h = ops::conv2d(&h, &self.conv_out)?;
        if self.config.time_embedding_type == TimeEmbeddingType::Fourier {
            let t = Tensor::from_vec(ts, (b, 1, 1, 1), dev)?.to_dtype(dtype)?;
            h = h.broadcast_div(&t)?;
        }
        Ok(h)
    }
}

/// Soft class labels: `weights` `[b, classes]` × the embedding table `[classes, dim]`, the
/// weighted mix of the class embeddings (a one-hot row is that class's embedding: linear
/// interpolation of class embeddings is a row of (1 − t, t)).
pub fn soft_embedding(table: &candle_nn::Embedding, weights: &Tensor, b: usize) -> Result<Tensor> {
    let e = table.embeddings();
    let k = e.dim(0)?;
    if weights.dims() != [b, k] {
        return Err(Error::Input(format!(
            "class weights have shape {:?}; expected [{b}, {k}] (one weight per class, null included)",
            weights.dims()
        )));
    }
    Ok(weights.to_dtype(e.dtype())?.matmul(e)?)
}

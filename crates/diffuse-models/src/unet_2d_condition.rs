//! `UNet2DConditionModel`, diffusers `models/unets/unet_2d_condition.py`: the text-conditioned
//! latent UNet of Stable Diffusion 1.x/2.x, with diffusers' weight names. Its
//! `CrossAttnDownBlock2D` / `CrossAttnUpBlock2D` / `UNetMidBlock2DCrossAttn` are the UNet's
//! blocks ([`crate::blocks`]) with a [`crate::transformer_2d::Transformer2D`] after each ResNet,
//! reading the text encoder's hidden states (`encoder_hidden_states`).

use crate::blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
use crate::config::{
    CondDownBlockType, CondMidBlockType, CondUpBlockType, ResampleType, ResnetTimeScaleShift,
    UNet2DConditionConfig,
};
use crate::embeddings::{TimeProjection, TimestepEmbedding};
use crate::ops;
use crate::resnet::{ResnetOptions, TimeNorm};
use crate::transformer_2d::TransformerSpec;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

/// The diffusers `UNet2DConditionModel`.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    pub(crate) config: UNet2DConditionConfig,
    pub(crate) conv_in: candle_nn::Conv2d,
    pub(crate) time_proj: TimeProjection,
    pub(crate) time_embedding: TimestepEmbedding,
    pub(crate) down_blocks: Vec<DownBlock>,
    pub(crate) mid_block: Option<MidBlock>,
    pub(crate) up_blocks: Vec<UpBlock>,
    pub(crate) conv_norm_out: ops::GroupNorm,
    pub(crate) conv_out: candle_nn::Conv2d,
}

impl UNet2DConditionModel {
    /// Builds the network; weights come from `vb` under diffusers' names.
    pub fn new(config: &UNet2DConditionConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let heads = c.heads()?;
        let layers = c.layers()?;
        let tlayers = c.transformer_layers()?;
        let cross = c.cross_attention_dims()?;
        let temb_dim = c.time_embed_dim();
        let conv3 = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = candle_nn::conv2d(c.in_channels, ch[0], 3, conv3, vb.pp("conv_in"))?;
        let time_proj = TimeProjection::Positional {
            dim: ch[0],
            flip_sin_to_cos: c.flip_sin_to_cos,
            freq_shift: c.freq_shift,
        };
        let time_embedding = TimestepEmbedding::new(ch[0], temb_dim, vb.pp("time_embedding"))?;
        let opts = ResnetOptions {
            groups: c.norm_num_groups,
            eps: c.norm_eps,
            temb_channels: Some(temb_dim),
            time_norm: match c.resnet_time_scale_shift {
                ResnetTimeScaleShift::Default => TimeNorm::Default,
                ResnetTimeScaleShift::ScaleShift => TimeNorm::ScaleShift,
            },
            output_scale_factor: 1.0,
        };
        // Heads are `channels / head_dim` wide (diffusers' `out_channels // num_attention_heads`).
        let transformer = |channels: usize, i: usize| TransformerSpec {
            heads: heads[i],
            head_dim: channels / heads[i],
            layers: tlayers[i],
            cross_attention_dim: cross[i],
            linear_projection: c.use_linear_projection,
            groups: c.norm_num_groups,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut out = ch[0];
        for (i, t) in c.down_block_types.iter().enumerate() {
            let input = out;
            out = ch[i];
            let spec = BlockSpec {
                num_layers: layers[i],
                in_channels: input,
                out_channels: out,
                prev_output_channels: 0,
                attention: false,
                transformer: (*t == CondDownBlockType::CrossAttnDownBlock2D)
                    .then(|| transformer(out, i)),
                resampler: (i != n - 1).then_some(ResampleType::Conv),
                takes_skips: false,
                downsample_padding: c.downsample_padding,
                attention_head_dim: None,
                resnet_inner: &[],
            };
            down_blocks.push(DownBlock::new(&spec, opts, vb.pp("down_blocks").pp(i))?);
        }
        let mid_block = match c.mid_block_type {
            Some(CondMidBlockType::UNetMidBlock2DCrossAttn) => {
                let last = ch[n - 1];
                let mid_opts = ResnetOptions {
                    output_scale_factor: c.mid_block_scale_factor,
                    ..opts
                };
                Some(MidBlock::cross_attn(
                    last,
                    mid_opts,
                    &transformer(last, n - 1),
                    vb.pp("mid_block"),
                )?)
            }
            None => None,
        };
        let mut up_blocks = Vec::with_capacity(n);
        let mut out = ch[n - 1];
        for (i, t) in c.up_block_types.iter().enumerate() {
            let level = n - 1 - i; // the down block this up block mirrors
            let prev = out;
            out = ch[level];
            let input = ch[level.saturating_sub(1)];
            let spec = BlockSpec {
                num_layers: layers[level] + 1,
                in_channels: input,
                out_channels: out,
                prev_output_channels: prev,
                attention: false,
                transformer: (*t == CondUpBlockType::CrossAttnUpBlock2D)
                    .then(|| transformer(out, level)),
                resampler: (i != n - 1).then_some(ResampleType::Conv),
                takes_skips: true,
                downsample_padding: c.downsample_padding,
                attention_head_dim: None,
                resnet_inner: &[],
            };
            up_blocks.push(UpBlock::new(&spec, opts, vb.pp("up_blocks").pp(i))?);
        }
        let conv_norm_out =
            ops::GroupNorm::new(c.norm_num_groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = candle_nn::conv2d(ch[0], c.out_channels, 3, conv3, vb.pp("conv_out"))?;
        Ok(UNet2DConditionModel {
            config: c.clone(),
            conv_in,
            time_proj,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }

    /// Sizes that divide by this take the plain 2× path (2 per downsampling block); others are
    /// resized to the skip states on the way up, as diffusers does.
    pub fn size_multiple(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// Every ResNet, transformer and resampler recomputes its activations in backward.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
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

    /// `sample`: [b, in_channels, h, w]; `timesteps`: b values (or one, broadcast);
    /// `encoder_hidden_states`: [b, L, cross_attention_dim] (a text encoder's last hidden
    /// states). Returns [b, out_channels, h, w].
    /// Runs on rayon's pool (see [`crate::kernels::on_pool`]).
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        crate::kernels::on_pool(|| self.forward_here(sample, timesteps, encoder_hidden_states))
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        let (b, c_in, h, w) = sample.dims4()?;
        if c_in != self.config.in_channels {
            return Err(Error::Input(format!(
                "sample has {c_in} channels, the model takes {}",
                self.config.in_channels
            )));
        }
        // Not a multiple of the overall downscale: each up block resizes to its skips' size.
        let m = self.size_multiple();
        let resize_up = h % m != 0 || w % m != 0;
        let ctx_dim = self.config.context_dim();
        match encoder_hidden_states.dims() {
            &[bc, _, d] if bc == b && d == ctx_dim => {}
            d => {
                return Err(Error::Input(format!(
                    "encoder hidden states have shape {d:?}; expected [{b}, L, {ctx_dim}] \
                     (the text encoder's hidden size must equal the UNet's cross_attention_dim)"
                )))
            }
        }
        let ts: Vec<f32> = match timesteps.len() {
            1 => vec![timesteps[0]; b],
            k if k == b => timesteps.to_vec(),
            k => return Err(Error::Input(format!("{k} timesteps for a batch of {b}"))),
        };
        let dtype = sample.dtype();
        let ctx = encoder_hidden_states.to_dtype(dtype)?;
        let ctx = Some(&ctx);
        let x = if self.config.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let t_emb = self
            .time_proj
            .forward(&ts, sample.device())?
            .to_dtype(dtype)?;
        let emb = self.time_embedding.forward(&t_emb)?; // [b, temb]
        let temb = Some(&emb);

        let mut h = ops::conv2d(&x, &self.conv_in)?;
        let mut skips = vec![h.clone()];
        for d in &self.down_blocks {
            let (o, states) = d.forward_context(&h, temb, ctx)?;
            h = o;
            skips.extend(states);
        }
        if let Some(m) = &self.mid_block {
            h = m.forward_context(&h, temb, ctx)?;
        }
        for u in &self.up_blocks {
            let k = u.num_states();
            let mine = skips.split_off(skips.len() - k);
            let to = match skips.last() {
                Some(s) if resize_up => Some((s.dim(2)?, s.dim(3)?)),
                _ => None,
            };
            h = u.forward_sized(&h, &mine, temb, ctx, to)?;
        }
        h = ops::group_norm(&h, &self.conv_norm_out, true)?;
        Ok(ops::conv2d(&h, &self.conv_out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Network, NetworkConfig};
    use crate::weights;
    use candle_core::{Device, Var};

    /// Two levels, one cross-attention block each way, a linear-projection transformer with two
    /// layers in the mid block.
    const TINY: &str = r#"{"_class_name": "UNet2DConditionModel", "sample_size": 8,
        "in_channels": 4, "out_channels": 4, "block_out_channels": [16, 32],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1,
        "attention_head_dim": [2, 4], "cross_attention_dim": 12, "norm_num_groups": 8,
        "transformer_layers_per_block": [1, 2], "use_linear_projection": true}"#;

    fn tiny() -> (Network, candle_nn::VarMap) {
        let cfg = NetworkConfig::from_json_str(TINY).unwrap();
        let (net, varmap) = weights::build::<Network>(&cfg, &Device::Cpu).unwrap();
        cfg.seeded_init(&varmap, 3).unwrap();
        (net, varmap)
    }

    #[test]
    fn the_context_steers_the_output_and_every_weight_gets_a_gradient() {
        let (mut net, varmap) = tiny();
        assert_eq!(net.context_dim(), Some(12));
        assert_eq!(net.component(), "unet");
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 4, 8, 8), &dev).unwrap();
        let ctx = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 5, 12), &dev).unwrap()).unwrap();
        let out = net
            .forward(&x, &[10.0, 500.0], Some(ctx.as_tensor()))
            .unwrap();
        assert_eq!(out.dims(), [2, 4, 8, 8]);
        let other = (ctx.as_tensor() * 2.0).unwrap();
        let moved = net.forward(&x, &[10.0, 500.0], Some(&other)).unwrap();
        let diff = (&out - &moved).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 1e-4);
        let e = net.forward(&x, &[1.0], None).unwrap_err().to_string();
        assert!(e.contains("prompt embeddings are required"), "{e}");
        let bad = Tensor::zeros((2, 5, 7), DType::F32, &dev).unwrap();
        let e = net.forward(&x, &[1.0], Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("cross_attention_dim"), "{e}");

        let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, v) in data.iter() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0,
                "{name}"
            );
        }
        let g_ctx = grads
            .get(ctx.as_tensor())
            .expect("the context gets a gradient");
        // Gradient checkpointing recomputes the blocks: same context gradient.
        drop(data);
        net.set_gradient_checkpointing(true);
        let out2 = net
            .forward(&x, &[10.0, 500.0], Some(ctx.as_tensor()))
            .unwrap();
        let grads2 = out2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = grads2.get(ctx.as_tensor()).unwrap();
        let d = (g_ctx - g2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn a_saved_model_loads_back_with_diffusers_names() {
        let (net, varmap) = tiny();
        let dir = tempfile::tempdir().unwrap();
        weights::save(&net.config(), &varmap, dir.path(), DType::F32).unwrap();
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        for n in [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "down_blocks.0.attentions.0.proj_in.weight",
            "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj.weight",
            "up_blocks.1.attentions.1.transformer_blocks.0.norm3.bias",
            "up_blocks.0.upsamplers.0.conv.weight",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing");
        }
        let (back, _) = weights::load::<Network>(dir.path(), &Device::Cpu).unwrap();
        let x = Tensor::ones((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let ctx = Tensor::ones((1, 3, 12), DType::F32, &Device::Cpu).unwrap();
        let a = net.forward(&x, &[3.0], Some(&ctx)).unwrap();
        let b = back.forward(&x, &[3.0], Some(&ctx)).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}

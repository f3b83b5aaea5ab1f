//! `AutoencoderKL`, diffusers `models/autoencoders/autoencoder_kl.py`, with its `Encoder`,
//! `Decoder` and `DiagonalGaussianDistribution` (`models/autoencoders/vae.py`): the latent
//! diffusion VAE (Stable Diffusion's), with diffusers' weight names. The ResNet, resampling,
//! attention and mid blocks are the UNet's own (`blocks`, `resnet`, `attention`).

use crate::blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
use crate::config::{AutoencoderKLConfig, ResampleType, VaeDownBlockType, VaeUpBlockType};
use crate::ops;
use crate::resnet::{ResnetOptions, TimeNorm};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use diffuse_core::rng::NoiseSource;

/// The VAE's GroupNorm epsilon (fixed in diffusers' `Encoder` / `Decoder`).
const EPS: f64 = 1e-6;

fn conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<candle_nn::Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    Ok(candle_nn::conv2d(cin, cout, k, cfg, vb)?)
}

fn resnet_options(c: &AutoencoderKLConfig) -> ResnetOptions {
    ResnetOptions {
        groups: c.norm_num_groups,
        eps: EPS,
        temb_channels: None,
        time_norm: TimeNorm::Default,
        output_scale_factor: 1.0,
    }
}

/// `UNetMidBlock2D` as the VAE builds it: one head over all channels, when attention is on.
fn mid_block(c: &AutoencoderKLConfig, vb: VarBuilder) -> Result<MidBlock> {
    let last = *c.block_out_channels.last().expect("validated");
    let attention = c
        .mid_block_add_attention
        .then_some((last, Some(c.norm_num_groups)));
    Ok(MidBlock::new(last, resnet_options(c), attention, vb)?)
}

/// diffusers `Encoder` with `double_z=True`: image → mean and log-variance of the latent.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: candle_nn::Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: ops::GroupNorm,
    conv_out: candle_nn::Conv2d,
}

impl Encoder {
    pub fn new(c: &AutoencoderKLConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let conv_in = conv(c.in_channels, ch[0], 3, vb.pp("conv_in"))?;
        let mut down_blocks = Vec::with_capacity(n);
        let mut out = ch[0];
        for (i, t) in c.down_block_types.iter().enumerate() {
            let input = out;
            out = ch[i];
            // ResNets, then a conv downsampler; no attention.
            let VaeDownBlockType::DownEncoderBlock2D = *t;
            let spec = BlockSpec {
                num_layers: c.layers_per_block,
                in_channels: input,
                out_channels: out,
                prev_output_channels: 0,
                attention: false,
                transformer: None,
                resampler: (i != n - 1).then_some(ResampleType::Conv),
                takes_skips: false,
                downsample_padding: 0,
                attention_head_dim: None,
                resnet_inner: &[],
            };
            down_blocks.push(DownBlock::new(
                &spec,
                resnet_options(c),
                vb.pp("down_blocks").pp(i),
            )?);
        }
        let mid_block = mid_block(c, vb.pp("mid_block"))?;
        let conv_norm_out =
            ops::GroupNorm::new(c.norm_num_groups, ch[n - 1], EPS, vb.pp("conv_norm_out"))?;
        let conv_out = conv(ch[n - 1], 2 * c.latent_channels, 3, vb.pp("conv_out"))?;
        Ok(Encoder {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
        })
    }

    /// Gradient checkpointing of every block (see [`AutoencoderKL::set_gradient_checkpointing`]).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        for d in &mut self.down_blocks {
            d.set_gradient_checkpointing(on);
        }
        self.mid_block.set_gradient_checkpointing(on);
    }

    /// `x`: [b, in, h, w] → [b, 2·latent, h/f, w/f] (mean then log-variance).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = ops::conv2d(x, &self.conv_in)?;
        for d in &self.down_blocks {
            h = d.forward(&h, None)?.0;
        }
        h = self.mid_block.forward(&h, None)?;
        h = ops::group_norm(&h, &self.conv_norm_out, true)?;
        Ok(ops::conv2d(&h, &self.conv_out)?)
    }
}

/// diffusers `Decoder` (group norm): latent → image.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub(crate) conv_in: candle_nn::Conv2d,
    pub(crate) mid_block: MidBlock,
    pub(crate) up_blocks: Vec<UpBlock>,
    pub(crate) conv_norm_out: ops::GroupNorm,
    pub(crate) conv_out: candle_nn::Conv2d,
}

impl Decoder {
    pub fn new(c: &AutoencoderKLConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let conv_in = conv(c.latent_channels, ch[n - 1], 3, vb.pp("conv_in"))?;
        let mid_block = mid_block(c, vb.pp("mid_block"))?;
        let mut up_blocks = Vec::with_capacity(n);
        let mut out = ch[n - 1];
        for (i, t) in c.up_block_types.iter().enumerate() {
            let prev = out;
            out = ch[n - 1 - i];
            // ResNets without skips, then a conv upsampler; no attention.
            let VaeUpBlockType::UpDecoderBlock2D = *t;
            let spec = BlockSpec {
                num_layers: c.layers_per_block + 1,
                in_channels: prev,
                out_channels: out,
                prev_output_channels: prev,
                attention: false,
                transformer: None,
                resampler: (i != n - 1).then_some(ResampleType::Conv),
                takes_skips: false,
                downsample_padding: 0,
                attention_head_dim: None,
                resnet_inner: &[],
            };
            up_blocks.push(UpBlock::new(
                &spec,
                resnet_options(c),
                vb.pp("up_blocks").pp(i),
            )?);
        }
        let conv_norm_out =
            ops::GroupNorm::new(c.norm_num_groups, ch[0], EPS, vb.pp("conv_norm_out"))?;
        let conv_out = conv(ch[0], c.out_channels, 3, vb.pp("conv_out"))?;
        Ok(Decoder {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Gradient checkpointing of every block (see [`AutoencoderKL::set_gradient_checkpointing`]).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.mid_block.set_gradient_checkpointing(on);
        for u in &mut self.up_blocks {
            u.set_gradient_checkpointing(on);
        }
    }

    /// `z`: [b, latent, h, w] → [b, out, h·f, w·f].
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = ops::conv2d(z, &self.conv_in)?;
        h = self.mid_block.forward(&h, None)?;
        for u in &self.up_blocks {
            h = u.forward(&h, &[], None)?;
        }
        h = ops::group_norm(&h, &self.conv_norm_out, true)?;
        Ok(ops::conv2d(&h, &self.conv_out)?)
    }
}

/// diffusers `DiagonalGaussianDistribution`: the encoder's posterior N(mean, exp(logvar)),
/// log-variance clamped to [−30, 20] as diffusers does.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// [b, latent, h, w]
    pub mean: Tensor,
    /// [b, latent, h, w], clamped
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits `moments` [b, 2·latent, h, w] into mean and log-variance along channels.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c = moments.dim(1)?;
        if c % 2 != 0 {
            return Err(Error::Input(format!(
                "posterior moments have {c} channels; expected an even number (mean, logvar)"
            )));
        }
        let mean = moments.narrow(1, 0, c / 2)?;
        let logvar = moments.narrow(1, c / 2, c / 2)?.clamp(-30f32, 20f32)?;
        Ok(DiagonalGaussian { mean, logvar })
    }

    /// exp(logvar / 2).
    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.logvar * 0.5)?.exp()?)
    }

    /// exp(logvar).
    pub fn var(&self) -> Result<Tensor> {
        Ok(self.logvar.exp()?)
    }

    /// The mean (diffusers' `mode()`).
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// mean + std · ε with ε from `noise` (one stream per sample with `SeededNoise`).
    pub fn sample(&self, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let eps = noise.randn(self.mean.shape(), self.mean.dtype(), self.mean.device())?;
        Ok((&self.mean + self.std()?.mul(&eps)?)?)
    }

    /// KL(q ‖ N(0, I)) per sample, summed over `[c, h, w]`: 0.5 Σ (μ² + σ² − 1 − log σ²) → `[b]`.
    pub fn kl(&self) -> Result<Tensor> {
        let t = ((self.mean.sqr()? + self.var()?)? - 1.0)?;
        Ok(((t - &self.logvar)?.flatten_from(1)?.sum(1)? * 0.5)?)
    }
}

/// The diffusers `AutoencoderKL`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    pub(crate) config: AutoencoderKLConfig,
    pub(crate) encoder: Encoder,
    pub(crate) decoder: Decoder,
    pub(crate) quant_conv: Option<candle_nn::Conv2d>,
    pub(crate) post_quant_conv: Option<candle_nn::Conv2d>,
    pub(crate) dtype: DType,
}

impl AutoencoderKL {
    /// Builds the network; weights come from `vb` under diffusers' names.
    pub fn new(config: &AutoencoderKLConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let l = config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(conv(2 * l, 2 * l, 1, vb.pp("quant_conv"))?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv(l, l, 1, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(AutoencoderKL {
            config: config.clone(),
            dtype: vb.dtype(),
            encoder: Encoder::new(config, vb.pp("encoder"))?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
            quant_conv,
            post_quant_conv,
        })
    }

    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Gradient checkpointing of the encoder's and decoder's ResNets, attentions and resamplers
    /// (as [`crate::UNet2DModel::set_gradient_checkpointing`]).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.encoder.set_gradient_checkpointing(on);
        self.decoder.set_gradient_checkpointing(on);
    }

    /// Checks the channel count; returns `x` in the weights' dtype (f32 when loaded, which is
    /// what `force_upcast` asks for).
    fn input(&self, x: &Tensor, want: usize, what: &str) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != want {
            return Err(Error::Input(format!(
                "{what} has {c} channels, the VAE takes {want}"
            )));
        }
        Ok(x.to_dtype(self.dtype)?)
    }

    /// `x`: [b, in, h, w] images in [−1, 1] → the posterior over [b, latent, h/f, w/f].
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        let x = self.input(x, self.config.in_channels, "image batch")?;
        let mut h = self.encoder.forward(&x)?;
        if let Some(q) = &self.quant_conv {
            h = ops::conv2d(&h, q)?;
        }
        DiagonalGaussian::from_moments(&h)
    }

    /// `z`: [b, latent, h, w] (unscaled latents) → images [b, out, h·f, w·f].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut z = self.input(z, self.config.latent_channels, "latent batch")?;
        if let Some(p) = &self.post_quant_conv {
            z = ops::conv2d(&z, p)?;
        }
        self.decoder.forward(&z)
    }

    /// `decode` over `slice` latents at a time (diffusers' `enable_slicing`), so a large batch
    /// never holds every image's activations at once. Same values as `decode`.
    pub fn decode_sliced(&self, z: &Tensor, slice: usize) -> Result<Tensor> {
        let b = z.dim(0)?;
        if slice == 0 || slice >= b {
            return self.decode(z);
        }
        let parts = (0..b)
            .step_by(slice)
            .map(|s| self.decode(&z.narrow(0, s, slice.min(b - s))?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Encode then decode: the posterior's mode (diffusers' `sample_posterior=False`), or a
    /// sample when `noise` is given.
    pub fn forward(&self, x: &Tensor, noise: Option<&mut dyn NoiseSource>) -> Result<Tensor> {
        let post = self.encode(x)?;
        let z = match noise {
            Some(n) => post.sample(n)?,
            None => post.mean,
        };
        self.decode(&z)
    }

    /// Latents as the diffusion model sees them: (z − shift_factor) · scaling_factor.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        Ok(z.affine(
            self.config.scaling_factor,
            -shift * self.config.scaling_factor,
        )?)
    }

    /// The inverse of [`Self::scale_latents`]: z / scaling_factor + shift_factor.
    pub fn unscale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        Ok(z.affine(1.0 / self.config.scaling_factor, shift)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use diffuse_core::rng::SeededNoise;

    fn tiny() -> AutoencoderKL {
        let config = AutoencoderKLConfig::from_json_str(
            r#"{"block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 2,
                "in_channels": 1, "out_channels": 1, "shift_factor": 0.5, "scaling_factor": 2.0,
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"#,
        )
        .unwrap();
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let vae = AutoencoderKL::new(&config, vb).unwrap();
        crate::weights::seeded_init(&varmap, 3).unwrap();
        vae
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn shapes_slices_and_latent_scaling() {
        let vae = tiny();
        let x = Tensor::randn(0f32, 1.0, (3, 1, 8, 6), &Device::Cpu).unwrap();
        let post = vae.encode(&x).unwrap();
        assert_eq!(post.mean.dims(), &[3, 2, 4, 3]);
        let y = vae.decode(&post.mean).unwrap();
        assert_eq!(y.dims(), &[3, 1, 8, 6]);
        let sliced = vae.decode_sliced(&post.mean, 2).unwrap();
        assert!(max_abs(&(&y - &sliced).unwrap()) < 1e-5);
        let s = vae.scale_latents(&post.mean).unwrap();
        let want = ((&post.mean - 0.5).unwrap() * 2.0).unwrap();
        assert!(max_abs(&(&s - &want).unwrap()) < 1e-6);
        let back = vae.unscale_latents(&s).unwrap();
        assert!(max_abs(&(&back - &post.mean).unwrap()) < 1e-6);
        let e = vae.decode(&x).unwrap_err().to_string();
        assert!(e.contains("1 channels") && e.contains("takes 2"), "{e}");
    }

    #[test]
    fn posterior_clamps_samples_and_kl() {
        let dev = Device::Cpu;
        // mean [1, 2], logvar [−40 → −30, ln 4]
        let m = Tensor::new(&[1f32, 2.0, -40.0, 4f32.ln()], &dev)
            .unwrap()
            .reshape((1, 4, 1, 1))
            .unwrap();
        let p = DiagonalGaussian::from_moments(&m).unwrap();
        let lv: Vec<f32> = p.logvar.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(lv[0], -30.0);
        // KL = 0.5 (1 + e⁻³⁰ − 1 + 30 + 4 + 4 − 1 − ln 4)
        let kl: f32 = p.kl().unwrap().squeeze(0).unwrap().to_scalar().unwrap();
        let want = 0.5 * (1.0 + (-30f32).exp() - 1.0 + 30.0 + 4.0 + 4.0 - 1.0 - 4f32.ln());
        assert!((kl - want).abs() < 1e-5, "{kl} vs {want}");
        // A sample is mean + std·ε with ε from the seeded stream.
        let s = p.sample(&mut SeededNoise::new(7, 1)).unwrap();
        let eps = SeededNoise::new(7, 1).randn_vec(2);
        let s: Vec<f32> = s.flatten_all().unwrap().to_vec1().unwrap();
        assert!((s[0] - (1.0 + (-15f32).exp() * eps[0])).abs() < 1e-6);
        assert!((s[1] - (2.0 + 2.0 * eps[1])).abs() < 1e-5);
        assert_eq!(p.mode().dims(), &[1, 2, 1, 1]);
    }
}

//! `DiTTransformer2DModel`, diffusers `models/transformers/dit_transformer_2d.py`: the Diffusion
//! Transformer of Peebles & Xie (2023), with diffusers' config keys and weight names.
//!
//! ```text
//! x [b, c, h, w] ─ pos_embed.proj (p×p conv, stride p) ─ tokens [b, N, D] + 2-D sin-cos (fixed)
//!   └ N × transformer_blocks.i (BasicTransformerBlock, norm_type "ada_norm_zero"):
//!       cond = norm1.emb(t, y)  = timestep_embedder(sinusoid₂₅₆(t)) + class_embedder(y)
//!       shift/scale/gate ×2     = norm1.linear(silu(cond))
//!       x += gate₁ · attn1(LN(x)·(1+scale₁)+shift₁)
//!       x += gate₂ · ff(norm3(x)·(1+scale₂)+shift₂)          ff: Linear → GELU → Linear (×4)
//!   └ shift, scale = proj_out_1(silu(cond of block 0)); proj_out_2(LN(x)·(1+scale)+shift)
//!   └ unpatchify → [b, out_channels, h, w]
//! ```
//!
//! Every block owns its own conditioning embedder (as diffusers builds it); the final layer
//! uses block 0's. The label table has `num_embeds_ada_norm + 1` rows: the last is the null
//! class of classifier-free guidance; a forward without labels uses it for every sample (so a
//! DiT with `num_embeds_ada_norm = 0` is an unconditional model). With `out_channels =
//! 2 · in_channels` (DiT's `learn_sigma`) the output's second half is the learned variance;
//! [`split_learned_sigma`] takes it off as diffusers' `DiTPipeline` does.
//! LayerNorm ([`ops::layer_norm`]), softmax ([`ops::attention`]) and GELU are candle ops with a
//! backward, so the model trains.

use crate::attention::Attention;
use crate::config::{DiTActivation, DiTTransformer2DConfig};
use crate::embeddings::{timestep_embedding, TimestepEmbedding};
use crate::ops;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

/// Width of the sinusoidal timestep projection (diffusers' `CombinedTimestepLabelEmbeddings`).
pub(crate) const TIME_PROJ_DIM: usize = 256;
/// eps of the adaLN and final LayerNorms (fixed in diffusers, independent of `norm_eps`).
pub(crate) const ADA_LN_EPS: f64 = 1e-6;

/// diffusers' `get_2d_sincos_pos_embed(dim, (gh, gw), base_size)`: `[gh·gw, dim]` for tokens in
/// row-major (h, w) order. The first half of the width encodes the column, the second the row,
/// each as [sin, cos] over `dim/4` frequencies 10000^(−4k/dim); positions are
/// `index / (grid / base_size)` (float32, as torch), the sinusoid is taken in f64.
pub fn sincos_pos_embed_2d(
    dim: usize,
    gh: usize,
    gw: usize,
    base_size: usize,
    device: &Device,
) -> Result<Tensor> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let pos = |n: usize| -> Vec<f64> {
        let step = (n as f64 / base_size as f64) as f32;
        (0..n).map(|i| (i as f32 / step) as f64).collect()
    };
    let (ph, pw) = (pos(gh), pos(gw));
    let mut out = Vec::with_capacity(gh * gw * dim);
    let push = |out: &mut Vec<f32>, p: f64| {
        out.extend(omega.iter().map(|&o| (p * o).sin() as f32));
        out.extend(omega.iter().map(|&o| (p * o).cos() as f32));
    };
    for &y in &ph {
        for &x in &pw {
            push(&mut out, x);
            push(&mut out, y);
        }
    }
    Ok(Tensor::from_vec(out, (gh * gw, dim), device)?)
}

/// Splits a DiT output `[b, out_channels, h, w]` into the prediction samplers use and, for a
/// model with `learn_sigma` (`out_channels = 2 · in_channels`), the variance half — as
/// diffusers' `DiTPipeline` does before `scheduler.step`. Other outputs pass through whole.
pub fn split_learned_sigma(out: &Tensor, in_channels: usize) -> Result<(Tensor, Option<Tensor>)> {
    let c = out.dim(1)?;
    if c == 2 * in_channels {
        Ok((
            out.narrow(1, 0, in_channels)?,
            Some(out.narrow(1, in_channels, in_channels)?),
        ))
    } else {
        Ok((out.clone(), None))
    }
}

/// `CombinedTimestepLabelEmbeddings`: timestep MLP + class table (null class last).
#[derive(Debug, Clone)]
pub(crate) struct Conditioning {
    pub(crate) timestep_embedder: TimestepEmbedding,
    pub(crate) embedding_table: candle_nn::Embedding,
}

impl Conditioning {
    fn new(classes: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Conditioning {
            timestep_embedder: TimestepEmbedding::new(
                TIME_PROJ_DIM,
                dim,
                vb.pp("timestep_embedder"),
            )?,
            embedding_table: candle_nn::embedding(
                classes + 1,
                dim,
                vb.pp("class_embedder").pp("embedding_table"),
            )?,
        })
    }

    /// `t_proj`: [b, 256]; `labels`: [b] u32, or [b, classes + 1] weights (soft labels) → [b, dim].
    fn forward(&self, t_proj: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let t = self.timestep_embedder.forward(t_proj)?;
        let y = match labels.rank() {
            2 => crate::unet_2d::soft_embedding(&self.embedding_table, labels, labels.dim(0)?)?,
            _ => candle_nn::Module::forward(&self.embedding_table, labels)?,
        };
        let y = y.to_dtype(t.dtype())?;
        Ok((t + y)?)
    }
}

/// `BasicTransformerBlock` with `norm_type = "ada_norm_zero"`, no cross-attention.
#[derive(Debug, Clone)]
pub(crate) struct DiTBlock {
    pub(crate) emb: Conditioning,
    /// `norm1.linear`: silu(cond) → 6 × dim modulation.
    pub(crate) ada: candle_nn::Linear,
    pub(crate) attn: Attention,
    /// `norm3` weight and bias when `norm_elementwise_affine`.
    pub(crate) norm3: Option<(Tensor, Tensor)>,
    pub(crate) norm_eps: f64,
    pub(crate) ff_in: candle_nn::Linear,
    pub(crate) ff_out: candle_nn::Linear,
    pub(crate) exact_gelu: bool,
    pub(crate) dim: usize,
}

impl DiTBlock {
    fn new(c: &DiTTransformer2DConfig, vb: VarBuilder) -> Result<Self> {
        let d = c.inner_dim();
        let norm3 = if c.norm_elementwise_affine {
            let vb = vb.pp("norm3");
            Some((
                vb.get_with_hints(d, "weight", Init::Const(1.0))?,
                vb.get_with_hints(d, "bias", Init::Const(0.0))?,
            ))
        } else {
            None
        };
        let ff = vb.pp("ff").pp("net");
        Ok(DiTBlock {
            emb: Conditioning::new(c.num_classes(), d, vb.pp("norm1").pp("emb"))?,
            ada: candle_nn::linear(d, 6 * d, vb.pp("norm1").pp("linear"))?,
            attn: Attention::new(
                d,
                c.num_attention_heads,
                c.attention_head_dim,
                c.attention_bias,
                vb.pp("attn1"),
            )?,
            norm3,
            norm_eps: c.norm_eps,
            ff_in: candle_nn::linear(d, 4 * d, ff.pp("0").pp("proj"))?,
            ff_out: candle_nn::linear(4 * d, d, ff.pp("2"))?,
            exact_gelu: match c.activation_fn {
                DiTActivation::Gelu => true,
                DiTActivation::GeluApproximate => false,
            },
            dim: d,
        })
    }

    /// `x`: [b, N, D]; `cond`: [b, D].
    fn forward(&self, x: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let d = self.dim;
        let m = ops::linear(&cond.silu()?, &self.ada)?; // [b, 6D]
        let part = |i: usize| -> Result<Tensor> { Ok(m.narrow(1, i * d, d)?.unsqueeze(1)?) };
        let (shift_msa, scale_msa, gate_msa) = (part(0)?, part(1)?, part(2)?);
        let (shift_mlp, scale_mlp, gate_mlp) = (part(3)?, part(4)?, part(5)?);
        let h = modulate(
            &ops::layer_norm(x, ADA_LN_EPS, None)?,
            &shift_msa,
            &scale_msa,
        )?;
        let a = self.attn.forward(&h)?;
        let x = (a.broadcast_mul(&gate_msa)? + x)?;
        let affine = self.norm3.as_ref().map(|(w, b)| (w, b));
        let h = modulate(
            &ops::layer_norm(&x, self.norm_eps, affine)?,
            &shift_mlp,
            &scale_mlp,
        )?;
        let h = ops::linear(&h, &self.ff_in)?;
        let h = if self.exact_gelu {
            h.gelu_erf()?
        } else {
            h.gelu()? // tanh approximation: torch's gelu(approximate="tanh")
        };
        let f = ops::linear(&h, &self.ff_out)?;
        Ok((f.broadcast_mul(&gate_mlp)? + x)?)
    }
}

/// `x · (1 + scale) + shift` with [b, 1, D] modulation.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

/// The diffusers `DiTTransformer2DModel`.
#[derive(Debug, Clone)]
pub struct DiTTransformer2DModel {
    pub(crate) config: DiTTransformer2DConfig,
    /// `pos_embed.proj`: the patch embedding.
    pub(crate) patch: candle_nn::Conv2d,
    /// [1, N, D] for the config's `sample_size` (a fixed buffer, not a weight).
    pub(crate) pos_embed: Tensor,
    pub(crate) blocks: Vec<DiTBlock>,
    pub(crate) proj_out_1: candle_nn::Linear,
    pub(crate) proj_out_2: candle_nn::Linear,
    gradient_checkpointing: bool,
}

impl DiTTransformer2DModel {
    /// Builds the network; weights come from `vb` under diffusers' names.
    pub fn new(config: &DiTTransformer2DConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let d = c.inner_dim();
        let p = c.patch_size;
        let patch = candle_nn::conv2d(
            c.in_channels,
            d,
            p,
            candle_nn::Conv2dConfig {
                stride: p,
                ..Default::default()
            },
            vb.pp("pos_embed").pp("proj"),
        )?;
        let g = c.sample_size / p;
        let pos_embed = sincos_pos_embed_2d(d, g, g, g, vb.device())?.unsqueeze(0)?;
        let blocks = (0..c.num_layers)
            .map(|i| DiTBlock::new(c, vb.pp("transformer_blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(DiTTransformer2DModel {
            config: c.clone(),
            patch,
            pos_embed,
            blocks,
            proj_out_1: candle_nn::linear(d, 2 * d, vb.pp("proj_out_1"))?,
            proj_out_2: candle_nn::linear(d, p * p * c.out_channels(), vb.pp("proj_out_2"))?,
            gradient_checkpointing: false,
        })
    }

    /// diffusers' `enable_gradient_checkpointing()` / `disable_…`: each transformer block
    /// recomputes its activations in backward instead of keeping them ([`crate::checkpoint`]).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.gradient_checkpointing = on;
    }

    pub fn gradient_checkpointing(&self) -> bool {
        self.gradient_checkpointing
    }

    /// The dtype of the weights (f32 unless built low-precision).
    pub fn dtype(&self) -> DType {
        self.patch.weight().dtype()
    }

    pub fn config(&self) -> &DiTTransformer2DConfig {
        &self.config
    }

    /// Whether the model was trained on class labels (`num_embeds_ada_norm > 0`).
    pub fn is_class_conditional(&self) -> bool {
        self.config.num_classes() > 0
    }

    /// The null label (the last row of the label table).
    pub fn null_class(&self) -> u32 {
        self.config.num_classes() as u32
    }

    /// Height and width must divide by the patch size.
    pub fn size_multiple(&self) -> usize {
        self.config.patch_size
    }

    /// `sample`: [b, in_channels, h, w]; `timesteps`: b values (or one, broadcast);
    /// `class_labels`: `[b]` integer labels in 0..=num_embeds_ada_norm (the last is the null
    /// class), `[b, num_embeds_ada_norm + 1]` weights over them (soft labels), or None for the
    /// null class everywhere. Returns [b, out_channels, h, w], the
    /// learned-variance half included (see [`split_learned_sigma`]).
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
        let c = &self.config;
        let (b, c_in, h, w) = sample.dims4()?;
        if c_in != c.in_channels {
            return Err(Error::Input(format!(
                "sample has {c_in} channels, the model takes {}",
                c.in_channels
            )));
        }
        let p = c.patch_size;
        if h % p != 0 || w % p != 0 {
            return Err(Error::Input(format!(
                "sample size {h}×{w} must be a multiple of the patch size {p}"
            )));
        }
        let ts: Vec<f32> = match timesteps.len() {
            1 => vec![timesteps[0]; b],
            k if k == b => timesteps.to_vec(),
            k => return Err(Error::Input(format!("{k} timesteps for a batch of {b}"))),
        };
        let dev = sample.device();
        let dtype = sample.dtype();
        let null = self.null_class();
        let labels = match class_labels {
            None => Tensor::from_vec(vec![null; b], b, dev)?,
            Some(l) if l.rank() == 2 => {
                if l.dims() != [b, null as usize + 1] {
                    return Err(Error::Input(format!(
                        "class weights have shape {:?}; expected [{b}, {}] (the null class included)",
                        l.dims(),
                        null + 1
                    )));
                }
                l.to_dtype(DType::F32)?.to_device(dev)?
            }
            Some(l) => {
                let l = l.flatten_all()?.to_dtype(DType::U32)?.to_device(dev)?;
                if l.dim(0)? != b {
                    return Err(Error::Input(format!(
                        "{} class labels for a batch of {b}",
                        l.dim(0)?
                    )));
                }
                let max = l.max_all()?.to_scalar::<u32>()?;
                if max > null {
                    return Err(Error::Input(format!(
                        "class label {max} out of range: the model has classes 0..{null} and the null class {null}"
                    )));
                }
                l
            }
        };

        let (gh, gw) = (h / p, w / p);
        let d = c.inner_dim();
        let g = c.sample_size / p;
        let pos = if (gh, gw) == (g, g) {
            self.pos_embed.clone()
        } else {
            sincos_pos_embed_2d(d, gh, gw, g, dev)?.unsqueeze(0)?
        };
        let tokens = ops::conv2d(sample, &self.patch)?; // [b, D, gh, gw]
        let mut x = tokens
            .flatten_from(2)?
            .transpose(1, 2)?
            .broadcast_add(&pos.to_dtype(dtype)?)?; // [b, N, D]

        let t_proj = timestep_embedding(&ts, TIME_PROJ_DIM, true, 1.0, dev)?.to_dtype(dtype)?;
        let mut first_cond = None;
        for blk in &self.blocks {
            let cond = blk.emb.forward(&t_proj, &labels)?;
            x = if self.gradient_checkpointing {
                let blk = blk.clone();
                crate::checkpoint::checkpoint(&x, Some(&cond), move |x, c| {
                    blk.forward(x, c.expect("conditioning"))
                        .map_err(candle_core::Error::wrap)
                })?
            } else {
                blk.forward(&x, &cond)?
            };
            first_cond.get_or_insert(cond);
        }
        let cond = match first_cond {
            Some(c) => c,
            // No blocks: the final layer still uses block 0's embedder, which does not exist.
            None => {
                return Err(Error::Config(
                    "config key `num_layers`: must be at least 1".into(),
                ))
            }
        };
        let m = ops::linear(&cond.silu()?, &self.proj_out_1)?; // [b, 2D]
        let shift = m.narrow(1, 0, d)?.unsqueeze(1)?;
        let scale = m.narrow(1, d, d)?.unsqueeze(1)?;
        let x = modulate(&ops::layer_norm(&x, ADA_LN_EPS, None)?, &shift, &scale)?;
        let x = ops::linear(&x, &self.proj_out_2)?; // [b, N, p·p·c_out]
        let co = c.out_channels();
        // unpatchify: "nhwpqc -> nchpwq"
        Ok(x.reshape((b, gh, gw, p, p, co))?
            .permute([0, 5, 1, 3, 2, 4])?
            .contiguous()?
            .reshape((b, co, gh * p, gw * p))?)
    }
}

/// Re-initializes a DiT's variables from `seed` as the DiT paper's `initialize_weights` does
/// (facebookresearch/DiT `models.py`): Xavier-uniform linear and patch-embedding weights with
/// zero biases, N(0, 0.02) label table and timestep-MLP weights, and zeros for the adaLN
/// modulation (`norm1.linear`) and the final layer (`proj_out_1`, `proj_out_2`) — adaLN-Zero:
/// every block starts as the identity. An affine `norm3` starts at weight 1, bias 0.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xD17_5EED);
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let is_weight = name.ends_with(".weight");
        let zero = name.contains(".norm1.linear.") || name.starts_with("proj_out_");
        let values: Vec<f32> = if zero {
            vec![0.0; n]
        } else if name.contains(".norm3.") {
            vec![if is_weight { 1.0 } else { 0.0 }; n]
        } else if !is_weight {
            vec![0.0; n]
        } else if name.contains(".embedding_table.") || name.contains(".timestep_embedder.") {
            let normal = rand_distr::Normal::new(0f32, 0.02).expect("valid σ");
            (0..n).map(|_| rng.sample(normal)).collect()
        } else {
            let dims = var.dims();
            let fan_out = dims[0];
            let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
            let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_embed_layout_follows_diffusers() {
        // Token (row 1, column 2) of a 3×4 grid, width 8: [sin/cos of the column, of the row].
        let e = sincos_pos_embed_2d(8, 3, 4, 3, &Device::Cpu).unwrap();
        assert_eq!(e.dims(), [12, 8]);
        let row: Vec<f32> = e.get(4 + 2).unwrap().to_vec1().unwrap();
        let x = 2.0 / (4.0f32 / 3.0); // column 2 on a grid of 4 with base size 3
        let y = 1.0f64;
        let want = [
            (x as f64).sin(),
            (x as f64 / 100.0).sin(),
            (x as f64).cos(),
            (x as f64 / 100.0).cos(),
            y.sin(),
            (y / 100.0).sin(),
            y.cos(),
            (y / 100.0).cos(),
        ];
        for (g, w) in row.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{row:?}");
        }
    }

    #[test]
    fn learned_sigma_split() {
        let t = Tensor::arange(0f32, 16.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 4, 2, 2))
            .unwrap();
        let (eps, var) = split_learned_sigma(&t, 2).unwrap();
        assert_eq!(eps.dims(), [1, 2, 2, 2]);
        assert_eq!(
            var.unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0],
            8.0
        );
        let (all, none) = split_learned_sigma(&t, 4).unwrap();
        assert!(none.is_none() && all.dims() == [1, 4, 2, 2]);
    }
}

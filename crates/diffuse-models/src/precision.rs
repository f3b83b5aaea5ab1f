//! Low-precision (bf16/f16) copies of a network, after torch.autocast and accelerate's
//! `mixed_precision`: the master weights stay f32 and a copy in the compute dtype runs the
//! forward. For training the copy is built over the `Var`s themselves (`to_dtype` has a
//! backward, so gradients arrive in f32 on the master weights); for inference over detached
//! tensors (`diffuse sample --dtype bf16`). [`crate::Network::forward`] casts its input
//! to the weights' dtype and the output back; [`crate::ops`] keeps GroupNorm, LayerNorm and the
//! attention softmax in f32.

use crate::weights::{self, DiffusersModel, ModelFolder};
use crate::{AutoencoderKL, Network, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;

/// A model over `tensors` with every weight cast to `dtype` (the casts stay in the autograd
/// graph when the tensors are `Var`s).
pub fn from_tensors_as<M: DiffusersModel>(
    config: &M::Config,
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<M> {
    M::build(config, VarBuilder::from_tensors(tensors, dtype, device))
}

/// The network of `folder` ([`ModelFolder::net_dir_to_load`]) with `dtype` weights, and its VAE (f32:
/// the VAE decodes once per image) for a latent pipeline — [`ModelFolder::load`] at another
/// precision.
pub fn load_as(
    folder: &ModelFolder,
    no_ema: bool,
    dtype: DType,
    device: &Device,
) -> Result<(Network, Option<AutoencoderKL>)> {
    if dtype == DType::F32 {
        return folder.load(no_ema, device);
    }
    let (net, varmap) = weights::load_net(folder.net_dir_to_load(no_ema), device)?;
    let config = net.config();
    drop(net);
    let net =
        from_tensors_as::<Network>(&config, weights::detached_tensors(&varmap), dtype, device)?;
    let vae = match &folder.vae_dir {
        Some(d) => {
            let (vae, _) = weights::load_vae(d, device)?;
            crate::pipeline::check_latent_channels(&config, vae.config())?;
            Some(vae)
        }
        None => None,
    };
    Ok((net, vae))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkConfig;

    /// max |a − b| / max |b|.
    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.to_dtype(DType::F32).unwrap();
        let b = b.to_dtype(DType::F32).unwrap();
        let d: f32 = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let m: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        d / m
    }

    /// Fixed pseudo-random values in about [−1.7, 1.7] (candle's CPU `randn` takes no seed).
    fn det(shape: (usize, usize, usize, usize), salt: f32) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 0.618_034 + salt).fract() - 0.5) * 3.4)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A seeded f32 network, its bf16 copy, and the output of both on the same input.
    fn outputs(config: &str, labels: Option<&[u32]>, dtype: DType) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let cfg = NetworkConfig::from_json_str(config).unwrap();
        let (net, varmap) = weights::build::<Network>(&cfg, &dev).unwrap();
        cfg.seeded_init(&varmap, 7).unwrap();
        let f32_net =
            weights::from_tensors::<Network>(&cfg, weights::detached_tensors(&varmap), &dev)
                .unwrap();
        drop(net);
        let low = from_tensors_as::<Network>(&cfg, weights::detached_tensors(&varmap), dtype, &dev)
            .unwrap();
        assert_eq!(low.dtype(), dtype);
        let (c, s) = (cfg.in_channels(), cfg.sample_hw().unwrap().0);
        let x = det((3, c, s, s), 0.1);
        let labels = labels.map(|l| Tensor::new(l, &dev).unwrap());
        let want = f32_net
            .forward(&x, &[10.0, 500.0, 900.0], labels.as_ref())
            .unwrap();
        let got = low
            .forward(&x, &[10.0, 500.0, 900.0], labels.as_ref())
            .unwrap();
        assert_eq!(
            got.dtype(),
            DType::F32,
            "the output comes back in the input's dtype"
        );
        (got, want)
    }

    /// A small class-conditional UNet with attention at 8×8.
    const UNET: &str = r#"{"_class_name": "UNet2DModel", "sample_size": 16,
        "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
        "norm_num_groups": 8, "attention_head_dim": 8, "num_class_embeds": 4}"#;

    /// A small class-conditional DiT (adaLN-Zero would make a fresh one the identity: the
    /// seeded init here is the UNet's PyTorch default, so every block computes).
    const DIT: &str = r#"{"_class_name": "DiTTransformer2DModel", "sample_size": 8,
        "in_channels": 4, "out_channels": 8, "patch_size": 2, "num_attention_heads": 2,
        "attention_head_dim": 16, "num_layers": 2, "num_embeds_ada_norm": 3}"#;

    #[test]
    fn bf16_unet_with_attention_and_labels_matches_f32() {
        let (got, want) = outputs(UNET, Some(&[0, 3, 1]), DType::BF16);
        let e = rel(&got, &want);
        eprintln!("UNet bf16 vs f32: max-abs rel error {e:.3e}");
        // bf16 keeps 8 mantissa bits: rounding only the weights and the input of this UNet
        // already moves its output by 5.0e-3, and PyTorch's own CPU autocast (bf16) of the same
        // architecture is 1.02e-2 to 1.26e-2 off its f32 output over five seeds
        // (tools/fixtures/amp_bf16_reference.py). Measured here: 1.06e-2.
        assert!(e < 2e-2, "{e}");
    }

    #[test]
    fn bf16_dit_matches_f32() {
        let dev = Device::Cpu;
        let cfg = NetworkConfig::from_json_str(DIT).unwrap();
        // The DiT's own init zeroes every block's modulation: use the generic seeded init so
        // attention, MLP and adaLN all contribute.
        let (_, varmap) = weights::build::<Network>(&cfg, &dev).unwrap();
        weights::seeded_init(&varmap, 3).unwrap();
        let tensors = weights::detached_tensors(&varmap);
        let f32_net = weights::from_tensors::<Network>(&cfg, tensors.clone(), &dev).unwrap();
        let low = from_tensors_as::<Network>(&cfg, tensors, DType::BF16, &dev).unwrap();
        let x = det((3, 4, 8, 8), 0.2);
        let l = Tensor::new(&[0u32, 2, 3], &dev).unwrap();
        let ts = [10.0, 500.0, 900.0];
        let want = f32_net.forward(&x, &ts, Some(&l)).unwrap();
        let got = low.forward(&x, &ts, Some(&l)).unwrap();
        let e = rel(&got, &want);
        eprintln!("DiT bf16 vs f32: max-abs rel error {e:.3e}");
        assert!(e < 1e-2, "{e}");
    }

    #[test]
    fn f16_unet_matches_f32() {
        let (got, want) = outputs(UNET, Some(&[2, 1, 0]), DType::F16);
        let e = rel(&got, &want);
        eprintln!("UNet f16 vs f32: max-abs rel error {e:.3e}");
        assert!(e < 1e-2, "{e}");
    }

    #[test]
    fn bf16_gradients_reach_the_f32_master_weights_and_match_f32() {
        let dev = Device::Cpu;
        let cfg = NetworkConfig::from_json_str(UNET).unwrap();
        let (_, varmap) = weights::build::<Network>(&cfg, &dev).unwrap();
        cfg.seeded_init(&varmap, 1).unwrap();
        let vars: HashMap<String, candle_core::Var> = varmap.data().lock().unwrap().clone();
        let x = det((2, 3, 16, 16), 0.3);
        let target = det((2, 3, 16, 16), 0.7);
        let l = Tensor::new(&[1u32, 2], &dev).unwrap();
        let grads = |dtype: DType| {
            let tensors = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            let net = from_tensors_as::<Network>(&cfg, tensors, dtype, &dev).unwrap();
            let out = net.forward(&x, &[3.0, 700.0], Some(&l)).unwrap();
            (out - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (g32, g16) = (grads(DType::F32), grads(DType::BF16));
        // ‖g_bf16 − g_f32‖ / ‖g_f32‖ over all weights.
        let (mut diff, mut norm) = (0f64, 0f64);
        for (k, v) in &vars {
            let a = g32
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no f32 gradient for {k}"));
            let b = g16
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no bf16 gradient for {k}"));
            assert_eq!(b.dtype(), DType::F32, "{k}: gradients arrive in f32");
            let sq = |t: Tensor| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            };
            diff += sq((a - b).unwrap());
            norm += sq(a.clone());
        }
        let e = (diff / norm).sqrt();
        eprintln!("UNet bf16 vs f32 gradient: relative L2 error {e:.3e}");
        assert!(e < 5e-2, "{e}");
    }
}

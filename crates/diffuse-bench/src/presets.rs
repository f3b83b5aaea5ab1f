//! Built-in bench models (`--preset`) and the DDIM scheduler config both sides sample with.

use crate::{Error, Result};
use diffuse_models::UNet2DConfig;
use serde_json::{json, Value};

/// Built-in model configs: name, description, config JSON.
pub const PRESETS: [(&str, &str); 3] = [
    (
        "mnist32",
        "1×32×32 DDPM U-Net of issue #8: channels (64,128,128), attention at 8×8",
    ),
    (
        "cifar64",
        "3×64×64 tutorial U-Net at a quarter width (32,64,64,128), attention at 16×16 and 8×8",
    ),
    (
        "tiny",
        "1×8×8, channels (16,32), one attention level: for tests",
    ),
];

/// The config of a built-in preset.
pub fn preset(name: &str) -> Result<UNet2DConfig> {
    let v = match name {
        "mnist32" => json!({
            "sample_size": 32, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [64, 128, 128], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 32
        }),
        // The tutorials' (128,256,256,512) with attention at the two lowest resolutions, at a
        // quarter width: measured on the 2-core machine (busy) with candle 0.11.1's ops, a
        // batch-32 training step took 86 s and 7.2 GB at this width, 205 s and 14.5 GB at
        // (64,128,128,256) — too much for a bench of ≥ 10 runs on 23 GB.
        "cifar64" => json!({
            "sample_size": 64, "in_channels": 3, "out_channels": 3,
            "block_out_channels": [32, 64, 64, 128], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 32
        }),
        "tiny" => json!({
            "sample_size": 8, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [16, 32], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 8
        }),
        other => return Err(Error::UnknownPreset(other.into())),
    };
    Ok(UNet2DConfig::from_json_str(&v.to_string())?)
}

/// The DDIM scheduler config both sides sample with (diffusers' DDIMScheduler defaults, spelt out).
pub fn scheduler_config_json() -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": true,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffuse_models::flops::forward_flops;

    #[test]
    fn flops_scale_with_resolution_and_match_torch_counter() {
        let c = preset("mnist32").unwrap();
        let f32x32 = forward_flops(&c, 32, 32);
        let f64x64 = forward_flops(&c, 64, 64);
        // Convs grow 4×, attention (L²) 16×; the time MLP does not grow.
        assert_eq!(f64x64.conv, 4 * f32x32.conv);
        assert_eq!(f64x64.attention, 16 * f32x32.attention);
        // torch.utils.flop_counter.FlopCounterMode on diffusers' UNet2DModel of these configs
        // (bench/torch_bench.py, `flops_forward_per_image_torch_counter`) counts the same.
        assert_eq!(f32x32.total(), 2_887_057_408);
        let c = preset("cifar64").unwrap();
        assert_eq!(forward_flops(&c, 64, 64).total(), 3_364_306_944);
    }
}

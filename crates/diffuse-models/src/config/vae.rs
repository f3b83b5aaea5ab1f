//! `config.json` of `AutoencoderKL` (`src/diffusers/models/autoencoders/autoencoder_kl.py`).

use super::{
    check_class_name, check_groups, key_error, parse, ActFn, SampleSize, NORM_NUM_GROUPS,
    RGB_CHANNELS,
};
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const CLASS_NAME: &str = "AutoencoderKL";

/// An entry of the VAE's `down_block_types` (diffuse implements the one diffusers uses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaeDownBlockType {
    #[default]
    DownEncoderBlock2D,
}

/// An entry of the VAE's `up_block_types`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaeUpBlockType {
    #[default]
    UpDecoderBlock2D,
}

/// The diffusers `AutoencoderKL` config. A missing key takes diffusers' default
/// ([`AutoencoderKLConfig::default`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<VaeDownBlockType>,
    pub up_block_types: Vec<VaeUpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: ActFn,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: SampleSize,
    /// Latents enter the diffusion model as `(z − shift_factor) · scaling_factor`.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    /// Keys diffuse does not read (`latents_mean`, `_diffusers_version`, …), kept for saving.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for AutoencoderKLConfig {
    /// diffusers' `AutoencoderKL.__init__` defaults.
    fn default() -> Self {
        AutoencoderKLConfig {
            class_name: CLASS_NAME.into(),
            in_channels: RGB_CHANNELS,
            out_channels: RGB_CHANNELS,
            down_block_types: vec![VaeDownBlockType::default()],
            up_block_types: vec![VaeUpBlockType::default()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: ActFn::default(),
            latent_channels: 4,
            norm_num_groups: NORM_NUM_GROUPS,
            sample_size: SampleSize::Square(32),
            // Stable Diffusion's VAE (Rombach et al. 2022).
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            extra: Map::new(),
        }
    }
}

impl AutoencoderKLConfig {
    /// Every key this config takes, sorted: `AutoencoderKL.__init__`'s keys (`latents_mean` and `latents_std` are kept, unread). A user's own
    /// config (`diffuse train`'s `[model]`) may use only these.
    pub fn known_keys() -> Vec<String> {
        super::keys_of::<Self>(&["latents_mean", "latents_std"])
    }

    /// Parses `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: AutoencoderKLConfig = parse(text, CLASS_NAME, &[CLASS_NAME])?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Height and width shrink by this much from image to latent (2 per down block but the last).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Checks every value diffuse relies on; errors name the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(key_error(key, msg));
        check_class_name(&self.class_name, &[CLASS_NAME])?;
        let n = self.block_out_channels.len();
        if n == 0 {
            return bad("block_out_channels", "must not be empty".into());
        }
        for (key, len) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
        ] {
            if len != n {
                return bad(key, format!("{len} block types for {n} block_out_channels"));
            }
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block", "must be at least 1".into());
        }
        check_groups(self.norm_num_groups, &self.block_out_channels)?;
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return bad(
                "scaling_factor",
                format!("must be finite and non-zero, got {}", self.scaling_factor),
            );
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return bad("shift_factor", "must be finite or null".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn vae_defaults_round_trip_and_errors() {
        let c = AutoencoderKLConfig::default();
        assert_eq!(c.block_out_channels, vec![64]);
        assert_eq!(c.scaling_factor, 0.18215);
        assert!(c.use_quant_conv && c.mid_block_add_attention && c.shift_factor.is_none());
        let text = r#"{"_class_name": "AutoencoderKL", "block_out_channels": [32, 64],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "norm_num_groups": 16,
            "latents_mean": null, "shift_factor": 0.1}"#;
        let c = AutoencoderKLConfig::from_json_str(text).unwrap();
        assert_eq!(c.downscale(), 2);
        let back: Value = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back["latents_mean"], Value::Null);
        assert_eq!(back["shift_factor"], 0.1);
        let err = |text: &str| {
            AutoencoderKLConfig::from_json_str(text)
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#);
        assert!(
            e.contains("down_block_types") && e.contains("AttnDownEncoderBlock2D"),
            "{e}"
        );
        let e = err(r#"{"block_out_channels": [48], "norm_num_groups": 32}"#);
        assert!(e.contains("norm_num_groups") && e.contains("48"), "{e}");
        let e = err(r#"{"_class_name": "VQModel"}"#);
        assert!(e.contains("_class_name"), "{e}");
        let e = err(r#"{"act_fn": "gelu"}"#);
        assert!(e.contains("act_fn"), "{e}");
        let e = err(r#"{"scaling_factor": 0.0}"#);
        assert!(e.contains("scaling_factor"), "{e}");
    }

    #[test]
    fn block_type_and_act_fn_errors_list_the_allowed_values() {
        let err = |text: &str| {
            AutoencoderKLConfig::from_json_str(text)
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"up_block_types": ["AttnUpDecoderBlock2D"]}"#);
        assert!(
            e.contains("config key `up_block_types") && e.contains("UpDecoderBlock2D"),
            "{e}"
        );
        let e = err(r#"{"act_fn": "mish"}"#);
        assert!(
            e.contains("config key `act_fn`") && e.contains("silu") && e.contains("swish"),
            "{e}"
        );
        // A UNet's config is refused by its class, not by its first unknown block type.
        let e = err(r#"{"_class_name": "UNet2DModel", "down_block_types": ["DownBlock2D"]}"#);
        assert!(
            e.contains("_class_name") && e.contains("UNet2DModel"),
            "{e}"
        );
        let c = AutoencoderKLConfig::from_json_str(r#"{"act_fn": "swish"}"#).unwrap();
        let back: Value = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back["act_fn"], "swish");
        assert_eq!(
            back["down_block_types"],
            serde_json::json!(["DownEncoderBlock2D"])
        );
    }
}

//! `config.json` of `AutoencoderKL` (`src/diffusers/models/autoencoders/autoencoder_kl.py`).

use super::{check_act_fn, check_groups, d_groups, d_in, d_silu, d_true, key_error, SampleSize};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn d_vae_class() -> String {
    "AutoencoderKL".into()
}
fn d_vae_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_vae_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_vae_channels() -> Vec<usize> {
    vec![64]
}
fn d_one_layer() -> usize {
    1
}
fn d_latent() -> usize {
    4
}
fn d_vae_size() -> SampleSize {
    SampleSize::Square(32)
}
fn d_scaling() -> f64 {
    0.18215
}

/// The diffusers `AutoencoderKL` config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(rename = "_class_name", default = "d_vae_class")]
    pub class_name: String,
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_in")]
    pub out_channels: usize,
    #[serde(default = "d_vae_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_vae_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_vae_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_one_layer")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_vae_size")]
    pub sample_size: SampleSize,
    /// Latents enter the diffusion model as `(z − shift_factor) · scaling_factor`.
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub force_upcast: bool,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// Keys diffuse does not read (`latents_mean`, `_diffusers_version`, …), kept for saving.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl AutoencoderKLConfig {
    /// Parses `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: AutoencoderKLConfig = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("AutoencoderKL config: {e}")))?;
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
        if self.class_name != "AutoencoderKL" {
            return bad(
                "_class_name",
                format!("{:?} is not an AutoencoderKL config", self.class_name),
            );
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return bad("block_out_channels", "must not be empty".into());
        }
        for (key, types, allowed) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return bad(
                    key,
                    format!("{} block types for {n} block_out_channels", types.len()),
                );
            }
            if let Some(t) = types.iter().find(|t| t.as_str() != allowed) {
                return bad(key, format!("unknown block type {t:?}; allowed: {allowed}"));
            }
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block", "must be at least 1".into());
        }
        check_act_fn(&self.act_fn)?;
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
}

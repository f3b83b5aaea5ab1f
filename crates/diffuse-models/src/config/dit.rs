//! `config.json` of `DiTTransformer2DModel` (`src/diffusers/models/transformers/dit_transformer_2d.py`).

use super::{check_quantization, d_eps, d_groups, d_true, key_error};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn d_dit_class() -> String {
    "DiTTransformer2DModel".into()
}
fn d_dit_heads() -> usize {
    16
}
fn d_dit_head_dim() -> usize {
    72
}
fn d_four() -> usize {
    4
}
fn d_dit_layers() -> usize {
    28
}
fn d_dit_size() -> usize {
    32
}
fn d_two() -> usize {
    2
}
fn d_gelu_tanh() -> String {
    "gelu-approximate".into()
}
fn d_ada_classes() -> Option<usize> {
    Some(1000)
}
fn d_ada_norm_zero() -> String {
    "ada_norm_zero".into()
}

/// Activation functions of the DiT feed-forward that diffuse implements.
pub const DIT_ACTIVATIONS: [&str; 2] = ["gelu-approximate", "gelu"];

/// The diffusers `DiTTransformer2DModel` config (DiT, Peebles & Xie 2023).
///
/// `num_embeds_ada_norm` is the number of classes: the label table has one more row, the null
/// class (index `num_embeds_ada_norm`) of classifier-free guidance. 0 makes an unconditional
/// DiT (the table holds only the null class). `out_channels = 2 · in_channels` is DiT's
/// `learn_sigma`: the second half of the output is the learned variance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiTTransformer2DConfig {
    #[serde(rename = "_class_name", default = "d_dit_class")]
    pub class_name: String,
    #[serde(default = "d_dit_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_dit_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "d_four")]
    pub in_channels: usize,
    /// None: `in_channels`.
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "d_dit_layers")]
    pub num_layers: usize,
    /// Accepted for compatibility; not applied (as the UNet's `dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// Unused by DiT (diffusers keeps the key).
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_true")]
    pub attention_bias: bool,
    #[serde(default = "d_dit_size")]
    pub sample_size: usize,
    #[serde(default = "d_two")]
    pub patch_size: usize,
    #[serde(default = "d_gelu_tanh")]
    pub activation_fn: String,
    #[serde(default = "d_ada_classes")]
    pub num_embeds_ada_norm: Option<usize>,
    /// No effect in f32 (diffuse computes attention in the input's dtype).
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "d_ada_norm_zero")]
    pub norm_type: String,
    #[serde(default)]
    pub norm_elementwise_affine: bool,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// `quantization_config` of int8 weights (`crate::quant`): checked when read, never written
    /// back (as the UNet's).
    #[serde(default, skip_serializing)]
    pub quantization_config: Option<Value>,
    /// Keys diffuse does not read (`_diffusers_version`, …), kept for saving.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DiTTransformer2DConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl DiTTransformer2DConfig {
    /// Parses `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: DiTTransformer2DConfig = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("DiTTransformer2DModel config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as diffusers writes it (known keys, then the kept unknown ones).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// Width of the token embeddings: heads × head dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// DiT's `learn_sigma`: the output holds a variance half after the prediction.
    pub fn learn_sigma(&self) -> bool {
        self.out_channels() == 2 * self.in_channels
    }

    /// Number of real classes (0: unconditional); the null class is this index.
    pub fn num_classes(&self) -> usize {
        self.num_embeds_ada_norm.unwrap_or(0)
    }

    /// Checks every value diffuse relies on; errors name the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(key_error(key, msg));
        // Hub checkpoints of DiT (facebook/DiT-XL-2-256) still name the old class, which
        // diffusers maps to DiTTransformer2DModel for ada_norm_zero with a patch size.
        if !matches!(
            self.class_name.as_str(),
            "DiTTransformer2DModel" | "Transformer2DModel"
        ) {
            return bad(
                "_class_name",
                format!(
                    "{:?} is not a DiTTransformer2DModel config",
                    self.class_name
                ),
            );
        }
        if self
            .extra
            .get("cross_attention_dim")
            .is_some_and(|v| !v.is_null())
        {
            return bad(
                "cross_attention_dim",
                "DiT has no cross-attention; allowed: null".into(),
            );
        }
        if self.norm_type != "ada_norm_zero" {
            return bad(
                "norm_type",
                format!(
                    "unsupported value {:?}; allowed: ada_norm_zero (DiT's adaLN-Zero)",
                    self.norm_type
                ),
            );
        }
        if self.num_embeds_ada_norm.is_none() {
            return bad(
                "num_embeds_ada_norm",
                "required with norm_type ada_norm_zero (the number of classes; 0 for an unconditional model)"
                    .into(),
            );
        }
        if !DIT_ACTIVATIONS.contains(&self.activation_fn.as_str()) {
            return bad(
                "activation_fn",
                format!(
                    "unsupported value {:?}; allowed: {}",
                    self.activation_fn,
                    DIT_ACTIVATIONS.join(", ")
                ),
            );
        }
        for (key, v) in [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("num_layers", self.num_layers),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("patch_size", self.patch_size),
            ("sample_size", self.sample_size),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if !self.sample_size.is_multiple_of(self.patch_size) {
            return bad(
                "sample_size",
                format!(
                    "{} is not a multiple of patch_size {}",
                    self.sample_size, self.patch_size
                ),
            );
        }
        let d = self.inner_dim();
        if !d.is_multiple_of(4) {
            return bad(
                "attention_head_dim",
                format!(
                    "num_attention_heads × attention_head_dim = {d} must be a multiple of 4 (the 2-D \
                     sin-cos position embedding gives a quarter of the width to each of sin/cos × h/w)"
                ),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(
                "norm_eps",
                format!("must be positive, got {}", self.norm_eps),
            );
        }
        check_quantization(self.quantization_config.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn dit_defaults_round_trip_and_errors() {
        let c = DiTTransformer2DConfig::default();
        assert_eq!((c.inner_dim(), c.num_layers, c.patch_size), (1152, 28, 2));
        assert_eq!((c.out_channels(), c.num_classes()), (4, 1000));
        let text = r#"{"_class_name": "DiTTransformer2DModel", "_diffusers_version": "0.42.1",
            "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4,
            "out_channels": 8, "sample_size": 8, "my_key": 1}"#;
        let c = DiTTransformer2DConfig::from_json_str(text).unwrap();
        assert!(c.learn_sigma());
        let back: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        assert_eq!(back["my_key"], 1);
        assert_eq!(back["num_embeds_ada_norm"], 1000);
        let err = |text: &str| {
            DiTTransformer2DConfig::from_json_str(text)
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"norm_type": "ada_norm"}"#);
        assert!(
            e.contains("norm_type") && e.contains("ada_norm_zero"),
            "{e}"
        );
        let e = err(r#"{"sample_size": 15, "patch_size": 2}"#);
        assert!(e.contains("sample_size") && e.contains("patch_size"), "{e}");
        let e = err(r#"{"num_embeds_ada_norm": null}"#);
        assert!(e.contains("num_embeds_ada_norm"), "{e}");
        let e = err(r#"{"activation_fn": "geglu"}"#);
        assert!(e.contains("activation_fn") && e.contains("geglu"), "{e}");
        let e = err(r#"{"num_attention_heads": 1, "attention_head_dim": 6}"#);
        assert!(e.contains("multiple of 4"), "{e}");
        let e = err(r#"{"_class_name": "UNet2DModel"}"#);
        assert!(e.contains("_class_name"), "{e}");
        let e = err(r#"{"cross_attention_dim": 768}"#);
        assert!(e.contains("cross_attention_dim"), "{e}");
    }
}

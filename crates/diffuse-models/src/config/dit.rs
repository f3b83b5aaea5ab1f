//! `config.json` of `DiTTransformer2DModel`
//! (`src/diffusers/models/transformers/dit_transformer_2d.py`).

use super::{check_class_name, check_quantization, key_error, parse, NORM_EPS, NORM_NUM_GROUPS};
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `_class_name`s read as a DiT. Hub checkpoints of DiT (facebook/DiT-XL-2-256) still name
/// the old class, which diffusers maps to `DiTTransformer2DModel` for ada_norm_zero with a
/// patch size.
const CLASS_NAMES: [&str; 2] = ["DiTTransformer2DModel", "Transformer2DModel"];

/// `activation_fn` of the feed-forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiTActivation {
    /// GELU with the tanh approximation (DiT's `approx_gelu`).
    #[default]
    GeluApproximate,
    /// Exact (erf) GELU.
    Gelu,
}

/// `norm_type` of the transformer blocks: diffuse implements DiT's adaLN-Zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiTNormType {
    #[default]
    AdaNormZero,
}

/// The diffusers `DiTTransformer2DModel` config (DiT, Peebles & Xie 2023). A missing key takes
/// diffusers' default ([`DiTTransformer2DConfig::default`]).
///
/// `num_embeds_ada_norm` is the number of classes: the label table has one more row, the null
/// class (index `num_embeds_ada_norm`) of classifier-free guidance. 0 makes an unconditional
/// DiT (the table holds only the null class). `out_channels = 2 · in_channels` is DiT's
/// `learn_sigma`: the second half of the output is the learned variance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DiTTransformer2DConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// None: `in_channels`.
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    /// Accepted for compatibility; not applied (as the UNet's `dropout`).
    pub dropout: f64,
    /// Unused by DiT (diffusers keeps the key).
    pub norm_num_groups: usize,
    pub attention_bias: bool,
    pub sample_size: usize,
    pub patch_size: usize,
    pub activation_fn: DiTActivation,
    pub num_embeds_ada_norm: Option<usize>,
    /// No effect in f32 (diffuse computes attention in the input's dtype).
    pub upcast_attention: bool,
    pub norm_type: DiTNormType,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    /// `quantization_config` of int8 weights (`crate::quant`): checked when read, never written
    /// back (as the UNet's).
    #[serde(skip_serializing)]
    pub quantization_config: Option<Value>,
    /// Keys diffuse does not read (`_diffusers_version`, …), kept for saving.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DiTTransformer2DConfig {
    /// diffusers' `DiTTransformer2DModel.__init__` defaults (DiT-XL/2 on 256² images' latents).
    fn default() -> Self {
        DiTTransformer2DConfig {
            class_name: CLASS_NAMES[0].into(),
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: None,
            num_layers: 28,
            dropout: 0.0,
            norm_num_groups: NORM_NUM_GROUPS,
            attention_bias: true,
            sample_size: 32,
            patch_size: 2,
            activation_fn: DiTActivation::default(),
            num_embeds_ada_norm: Some(1000),
            upcast_attention: false,
            norm_type: DiTNormType::default(),
            norm_elementwise_affine: false,
            norm_eps: NORM_EPS,
            quantization_config: None,
            extra: Map::new(),
        }
    }
}

impl DiTTransformer2DConfig {
    /// Every key this config takes, sorted: `DiTTransformer2DModel.__init__`'s keys. A user's own
    /// config (`diffuse train`'s `[model]`) may use only these.
    pub fn known_keys() -> Vec<String> {
        super::keys_of::<Self>(&[])
    }

    /// Parses `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: DiTTransformer2DConfig = parse(text, CLASS_NAMES[0], &CLASS_NAMES)?;
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
        check_class_name(&self.class_name, &CLASS_NAMES)?;
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
        if self.num_embeds_ada_norm.is_none() {
            return bad(
                "num_embeds_ada_norm",
                "required with norm_type ada_norm_zero (the number of classes; 0 for an unconditional model)"
                    .into(),
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

    #[test]
    fn typed_options_round_trip_and_list_the_allowed_values() {
        let c = DiTTransformer2DConfig::from_json_str(
            r#"{"_class_name": "Transformer2DModel", "activation_fn": "gelu",
                "norm_type": "ada_norm_zero"}"#,
        )
        .unwrap();
        assert_eq!(c.activation_fn, DiTActivation::Gelu);
        let back: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        assert_eq!(back["_class_name"], "Transformer2DModel");
        assert_eq!(back["activation_fn"], "gelu");
        assert_eq!(back["norm_type"], "ada_norm_zero");
        let d: Value =
            serde_json::from_str(&DiTTransformer2DConfig::default().to_json_string()).unwrap();
        assert_eq!(d["activation_fn"], "gelu-approximate");
        let err = |text: &str| {
            DiTTransformer2DConfig::from_json_str(text)
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"activation_fn": "geglu"}"#);
        assert!(
            e.contains("config key `activation_fn`")
                && e.contains("gelu-approximate")
                && e.contains("`gelu`"),
            "{e}"
        );
        let e = err(r#"{"_class_name": "UNet2DModel"}"#);
        assert!(
            e.contains("DiTTransformer2DModel") && e.contains("Transformer2DModel"),
            "{e}"
        );
    }
}

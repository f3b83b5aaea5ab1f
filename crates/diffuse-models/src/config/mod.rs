//! `config.json` of `UNet2DModel` (`src/diffusers/models/unets/unet_2d.py`), of
//! `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`) and of `DiTTransformer2DModel`
//! (`models/transformers/dit_transformer_2d.py`), with diffusers' keys and defaults. Unknown keys
//! are kept and written back.

mod dit;
mod unet;
mod vae;

pub use dit::{DiTTransformer2DConfig, DIT_ACTIVATIONS};
pub use unet::{ClassEmbedding, UNet2DConfig, DOWN_BLOCKS, RESNET_INNER_KEY, UP_BLOCKS};
pub use vae::AutoencoderKLConfig;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn d_in() -> usize {
    3
}
fn d_true() -> bool {
    true
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_silu() -> String {
    "silu".into()
}

/// Sample size: one int or [height, width].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect(Vec<usize>),
}

/// `quantization_config`, when present, must be one diffuse reads (`crate::quant`).
fn check_quantization(v: Option<&Value>) -> Result<()> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(v) => crate::quant::QuantizationConfig::from_value(v).map(|_| ()),
    }
}

/// A config error that names the key.
fn key_error(key: &str, msg: String) -> Error {
    Error::Config(format!("config key `{key}`: {msg}"))
}

/// `act_fn`: the ResNet blocks run GroupNorm + SiLU (`ops::group_norm`), so only SiLU.
fn check_act_fn(act_fn: &str) -> Result<()> {
    if matches!(act_fn, "silu" | "swish") {
        Ok(())
    } else {
        Err(key_error(
            "act_fn",
            format!("unsupported value {act_fn:?}; allowed: silu, swish"),
        ))
    }
}

/// `norm_num_groups` must divide every width of `block_out_channels`.
fn check_groups(groups: usize, channels: &[usize]) -> Result<()> {
    if groups == 0 {
        return Err(key_error("norm_num_groups", "must be at least 1".into()));
    }
    for &c in channels {
        if c == 0 || !c.is_multiple_of(groups) {
            return Err(key_error(
                "norm_num_groups",
                format!("{groups} groups do not divide block_out_channels {c}"),
            ));
        }
    }
    Ok(())
}

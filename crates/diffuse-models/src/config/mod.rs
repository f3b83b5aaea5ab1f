//! `config.json` of `UNet2DModel` (`src/diffusers/models/unets/unet_2d.py`), of
//! `UNet2DConditionModel` (`unet_2d_condition.py`), of
//! `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`) and of `DiTTransformer2DModel`
//! (`models/transformers/dit_transformer_2d.py`), with diffusers' keys and defaults. Unknown keys
//! are kept and written back (diffusers ignores them).
//!
//! Legacy configs load as diffusers loads them (`legacy`): keys named in
//! `_use_default_values` take the default, and block types with the old `UNetRes` prefix name
//! the block without it.
//!
//! Options with a fixed set of values are serde enums whose variants serialize to diffusers'
//! strings; an unknown value fails at load with an error that names the key and lists the
//! allowed values.

mod dit;
mod unet;
mod unet_condition;
mod vae;

pub use dit::{DiTActivation, DiTNormType, DiTTransformer2DConfig};
pub use unet::{
    ClassEmbedType, ClassEmbedding, DownBlockType, MidBlockType, ResampleType,
    ResnetTimeScaleShift, TimeEmbeddingType, UNet2DConfig, UpBlockType, RESNET_INNER_KEY,
};
pub use unet_condition::{
    CondDownBlockType, CondMidBlockType, CondUpBlockType, PerBlock, UNet2DConditionConfig,
};
pub use vae::{AutoencoderKLConfig, VaeDownBlockType, VaeUpBlockType};

use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// diffusers' default `in_channels` / `out_channels` (RGB).
const RGB_CHANNELS: usize = 3;
/// diffusers' default `norm_num_groups`.
const NORM_NUM_GROUPS: usize = 32;
/// diffusers' default `norm_eps`.
const NORM_EPS: f64 = 1e-5;

/// Sample size: one int or [height, width].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect(Vec<usize>),
}

/// `act_fn` of the ResNet blocks. Both names are SiLU, the one activation `ops::group_norm`
/// fuses; the name read is written back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    #[default]
    Silu,
    Swish,
}

/// Parses a model's `config.json` text: `_class_name` first (a config of another model says
/// so), then each key into its typed field, with errors that name the key.
pub(crate) fn parse<T: DeserializeOwned>(text: &str, model: &str, classes: &[&str]) -> Result<T> {
    let mut value: Value = diffuse_core::pyjson::parse(text)
        .map_err(|e| Error::Config(format!("{model} config: {e}")))?;
    legacy(&mut value);
    if let Some(name) = value.get("_class_name").and_then(Value::as_str) {
        check_class_name(name, classes)?;
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if key == "." {
            Error::Config(format!("{model} config: {inner}"))
        } else {
            key_error(&key, inner.to_string())
        }
    })
}

/// What diffusers 0.42.1 does to an old `config.json` before `__init__` sees it:
/// - `ConfigMixin.extract_init_dict` drops every key listed in `_use_default_values` (the keys
///   the saving version filled in with its own defaults), so they take today's defaults; the
///   list itself is never saved again.
/// - `get_down_block` / `get_up_block` (`unet_2d_blocks.py`, also used by AutoencoderKL's
///   encoder and decoder) strip a leading `UNetRes` from a block type (`UNetResDownBlock2D` is
///   `DownBlock2D`); the stripped name is written back.
///
/// Unknown keys need nothing here: they stay in `extra`, unread, as diffusers warns and
/// ignores them.
fn legacy(value: &mut Value) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(defaulted)) = map.remove(USE_DEFAULT_VALUES) {
        for key in defaulted.iter().filter_map(Value::as_str) {
            map.remove(key);
        }
    }
    for key in ["down_block_types", "up_block_types"] {
        if let Some(Value::Array(types)) = map.get_mut(key) {
            for t in types.iter_mut() {
                if let Some(name) = t.as_str().and_then(|s| s.strip_prefix(LEGACY_BLOCK_PREFIX)) {
                    *t = Value::from(name);
                }
            }
        }
    }
}

/// diffusers' list of keys that took `__init__`'s default when the config was saved.
const USE_DEFAULT_VALUES: &str = "_use_default_values";
/// The prefix `get_down_block` / `get_up_block` strip from a block type.
const LEGACY_BLOCK_PREFIX: &str = "UNetRes";

/// The keys of a config type: those its default writes, plus `also` (keys it reads but does not
/// write by default).
fn keys_of<T: Serialize + Default>(also: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = match serde_json::to_value(T::default()) {
        Ok(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    keys.extend(also.iter().map(|k| k.to_string()));
    keys.sort();
    keys.dedup();
    keys
}

/// `_class_name` must be one of `classes` (the first is the canonical one).
fn check_class_name(name: &str, classes: &[&str]) -> Result<()> {
    if classes.contains(&name) {
        Ok(())
    } else {
        Err(key_error(
            "_class_name",
            format!(
                "{name:?} is not a {} config; allowed: {}",
                classes[0],
                classes.join(", ")
            ),
        ))
    }
}

/// `quantization_config`, when present, must be one diffuse reads (`crate::quant`).
fn check_quantization(v: Option<&Value>) -> Result<()> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(v) => crate::quant::QuantizationConfig::from_value(v).map(|_| ()),
    }
}

/// A config error that names the key.
pub(crate) fn key_error(key: &str, msg: String) -> Error {
    Error::Config(format!("config key `{key}`: {msg}"))
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

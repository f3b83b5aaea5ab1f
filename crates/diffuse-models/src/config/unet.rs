//! `config.json` of `UNet2DModel` (`src/diffusers/models/unets/unet_2d.py`).

use super::{
    check_act_fn, check_groups, check_quantization, d_eps, d_groups, d_in, d_silu, d_true,
    key_error, SampleSize,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// diffuse's own `config.json` key of a pruned UNet (`diffuse prune`): the inner width of
/// each pruned ResNet block by weight prefix (`down_blocks.0.resnets.1`, `mid_block.resnets.0`,
/// …): conv1's output channels = norm2's channels = time_emb_proj's rows (each half for
/// `scale_shift`) = conv2's input channels. Absent (or a block not named): `out_channels`, as
/// in diffusers. diffusers' `UNet2DModel` cannot express it and refuses such weights.
pub const RESNET_INNER_KEY: &str = "diffuse_resnet_inner_channels";

/// Down block types diffuse implements.
pub const DOWN_BLOCKS: [&str; 3] = ["DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"];
/// Up block types diffuse implements.
pub const UP_BLOCKS: [&str; 3] = ["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"];

fn default_class_name() -> String {
    "UNet2DModel".into()
}

fn d_positional() -> String {
    "positional".into()
}
fn d_down() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn d_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn d_layers() -> usize {
    2
}
fn d_one() -> f64 {
    1.0
}
fn d_pad() -> usize {
    1
}
fn d_conv() -> String {
    "conv".into()
}
fn d_head() -> Option<usize> {
    Some(8)
}
fn d_default() -> String {
    "default".into()
}

/// The diffusers `UNet2DModel` config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UNet2DConfig {
    #[serde(rename = "_class_name", default = "default_class_name")]
    pub class_name: String,
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_in")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_pad")]
    pub downsample_padding: usize,
    #[serde(default = "d_conv")]
    pub downsample_type: String,
    #[serde(default = "d_conv")]
    pub upsample_type: String,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_head")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_true")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    /// [`RESNET_INNER_KEY`]: the inner widths of pruned ResNet blocks (empty: unpruned).
    #[serde(
        rename = "diffuse_resnet_inner_channels",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub resnet_inner_channels: BTreeMap<String, usize>,
    /// `quantization_config` of int8 weights (`crate::quant`): checked when read, never written
    /// back, since `weights::save` and the trainer write float weights.
    #[serde(default, skip_serializing)]
    pub quantization_config: Option<Value>,
    /// Keys diffuse does not read (`_diffusers_version`, …), kept for saving.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for UNet2DConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

/// How class labels enter the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassEmbedding {
    None,
    /// `nn.Embedding(num_class_embeds, time_embed_dim)`: integer labels.
    Table(usize),
    /// Labels go through the time projection and their own `TimestepEmbedding`.
    Timestep,
    /// Labels are already `[b, time_embed_dim]` vectors.
    Identity,
}

impl UNet2DConfig {
    /// Parses `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: UNet2DConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("UNet config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as diffusers writes it (known keys, then the kept unknown ones).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// Width of the time embedding (block_out_channels[0]·4 unless given).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    pub fn class_embedding(&self) -> ClassEmbedding {
        match (self.class_embed_type.as_deref(), self.num_class_embeds) {
            (None, Some(n)) => ClassEmbedding::Table(n),
            (Some("timestep"), _) => ClassEmbedding::Timestep,
            (Some("identity"), _) => ClassEmbedding::Identity,
            _ => ClassEmbedding::None,
        }
    }

    /// Spatial size (height, width), if the config gives one.
    pub fn sample_hw(&self) -> Option<(usize, usize)> {
        match &self.sample_size {
            Some(SampleSize::Square(s)) => Some((*s, *s)),
            Some(SampleSize::Rect(v)) if v.len() == 2 => Some((v[0], v[1])),
            _ => None,
        }
    }

    /// Every ResNet block of the network as (weight prefix, output channels), in the order
    /// `UNet2DModel::new` builds them: down blocks (their resampling ResNet last), mid block,
    /// up blocks.
    pub fn resnet_blocks(&self) -> Vec<(String, usize)> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let resamples_with_resnet = |t: &str, kind: &str, resnet_block: &str, attn_block: &str| {
            t == resnet_block || (t == attn_block && kind == "resnet")
        };
        let mut out = Vec::new();
        for (i, t) in self.down_block_types.iter().enumerate() {
            for j in 0..self.layers_per_block {
                out.push((format!("down_blocks.{i}.resnets.{j}"), ch[i]));
            }
            if i != n - 1
                && resamples_with_resnet(
                    t,
                    &self.downsample_type,
                    "ResnetDownsampleBlock2D",
                    "AttnDownBlock2D",
                )
            {
                out.push((format!("down_blocks.{i}.downsamplers.0"), ch[i]));
            }
        }
        if self.mid_block_type.is_some() {
            for j in 0..2 {
                out.push((format!("mid_block.resnets.{j}"), ch[n - 1]));
            }
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            let c = ch[n - 1 - i];
            for j in 0..=self.layers_per_block {
                out.push((format!("up_blocks.{i}.resnets.{j}"), c));
            }
            if i != n - 1
                && resamples_with_resnet(
                    t,
                    &self.upsample_type,
                    "ResnetUpsampleBlock2D",
                    "AttnUpBlock2D",
                )
            {
                out.push((format!("up_blocks.{i}.upsamplers.0"), c));
            }
        }
        out
    }

    /// Inner width of the ResNet block at `prefix` whose output has `out` channels:
    /// [`RESNET_INNER_KEY`]'s value, else `out`.
    pub fn resnet_inner(&self, prefix: &str, out: usize) -> usize {
        self.resnet_inner_channels
            .get(prefix)
            .copied()
            .unwrap_or(out)
    }

    /// Checks every value diffuse relies on; errors name the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(key_error(key, msg));
        if self.class_name != "UNet2DModel" {
            return bad(
                "_class_name",
                format!("{:?} is not a UNet2DModel config", self.class_name),
            );
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return bad("block_out_channels", "must not be empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(
                "down_block_types",
                format!(
                    "{} down and {} up block types for {n} block_out_channels; all three must have the same length",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            );
        }
        for t in &self.down_block_types {
            if !DOWN_BLOCKS.contains(&t.as_str()) {
                return bad(
                    "down_block_types",
                    format!(
                        "unknown block type {t:?}; allowed: {}",
                        DOWN_BLOCKS.join(", ")
                    ),
                );
            }
        }
        for t in &self.up_block_types {
            if !UP_BLOCKS.contains(&t.as_str()) {
                return bad(
                    "up_block_types",
                    format!(
                        "unknown block type {t:?}; allowed: {}",
                        UP_BLOCKS.join(", ")
                    ),
                );
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(t) => {
                return bad(
                    "mid_block_type",
                    format!("unknown block type {t:?}; allowed: UNetMidBlock2D, null"),
                )
            }
        }
        if !matches!(
            self.time_embedding_type.as_str(),
            "positional" | "fourier" | "learned"
        ) {
            return bad(
                "time_embedding_type",
                format!(
                    "unknown value {:?}; allowed: positional, fourier, learned",
                    self.time_embedding_type
                ),
            );
        }
        if self.time_embedding_type == "learned" && self.num_train_timesteps.is_none() {
            return bad(
                "num_train_timesteps",
                "required with time_embedding_type \"learned\"".into(),
            );
        }
        check_act_fn(&self.act_fn)?;
        if !matches!(
            self.resnet_time_scale_shift.as_str(),
            "default" | "scale_shift"
        ) {
            return bad(
                "resnet_time_scale_shift",
                format!(
                    "unknown value {:?}; allowed: default, scale_shift",
                    self.resnet_time_scale_shift
                ),
            );
        }
        for (key, v) in [
            ("downsample_type", &self.downsample_type),
            ("upsample_type", &self.upsample_type),
        ] {
            if !matches!(v.as_str(), "conv" | "resnet") {
                return bad(key, format!("unknown value {v:?}; allowed: conv, resnet"));
            }
        }
        match self.class_embed_type.as_deref() {
            None | Some("timestep") | Some("identity") => {}
            Some(t) => {
                return bad(
                    "class_embed_type",
                    format!("unknown value {t:?}; allowed: null, timestep, identity"),
                )
            }
        }
        if self.class_embed_type.is_none() && self.num_class_embeds == Some(0) {
            return bad("num_class_embeds", "must be at least 1".into());
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        check_groups(self.norm_num_groups, &self.block_out_channels)?;
        for &c in &self.block_out_channels {
            if let Some(h) = self.attention_head_dim {
                if h == 0 || h > c {
                    return bad(
                        "attention_head_dim",
                        format!("{h} does not fit {c} channels"),
                    );
                }
            }
        }
        if let Some(ag) = self.attn_norm_num_groups {
            let c = self.block_out_channels[n - 1];
            if ag == 0 || !c.is_multiple_of(ag) {
                return bad(
                    "attn_norm_num_groups",
                    format!("{ag} groups do not divide {c} channels"),
                );
            }
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad("in_channels", "channel counts must be at least 1".into());
        }
        if !self.resnet_inner_channels.is_empty() {
            let blocks: BTreeMap<String, usize> = self.resnet_blocks().into_iter().collect();
            for (prefix, &w) in &self.resnet_inner_channels {
                let Some(&out) = blocks.get(prefix) else {
                    return bad(
                        RESNET_INNER_KEY,
                        format!(
                            "{prefix:?} is not a ResNet block of this network (e.g. {:?})",
                            blocks.keys().next().map(String::as_str).unwrap_or("")
                        ),
                    );
                };
                if w == 0 || w > out || !w.is_multiple_of(self.norm_num_groups) {
                    return bad(
                        RESNET_INNER_KEY,
                        format!(
                            "{prefix:?}: {w} channels; allowed: a multiple of norm_num_groups {} \
                             up to the block's {out} output channels",
                            self.norm_num_groups
                        ),
                    );
                }
            }
        }
        check_quantization(self.quantization_config.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn defaults_and_round_trip() {
        let c = UNet2DConfig::default();
        assert_eq!(c.block_out_channels, vec![224, 448, 672, 896]);
        assert_eq!(c.attention_head_dim, Some(8));
        let text = r#"{"_class_name": "UNet2DModel", "_diffusers_version": "0.42.1",
            "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": null,
            "sample_size": 16, "my_key": [1]}"#;
        let c = UNet2DConfig::from_json_str(text).unwrap();
        assert_eq!(c.attention_head_dim, None);
        let back: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        assert_eq!(back["_diffusers_version"], "0.42.1");
        assert_eq!(back["my_key"], serde_json::json!([1]));
        assert_eq!(back["attention_head_dim"], Value::Null);
    }

    #[test]
    fn unknown_block_type_names_the_key() {
        let text = r#"{"block_out_channels": [32], "down_block_types": ["CrossAttnDownBlock2D"],
            "up_block_types": ["UpBlock2D"]}"#;
        let e = UNet2DConfig::from_json_str(text).unwrap_err().to_string();
        assert!(
            e.contains("down_block_types") && e.contains("CrossAttnDownBlock2D"),
            "{e}"
        );
        let e = UNet2DConfig::from_json_str(r#"{"_class_name": "UNet2DConditionModel"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("_class_name"), "{e}");
    }
}

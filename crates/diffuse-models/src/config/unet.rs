//! `config.json` of `UNet2DModel` (`src/diffusers/models/unets/unet_2d.py`) and the block
//! types of `models/unets/unet_2d_blocks.py` that diffuse implements.

use super::{
    check_class_name, check_groups, check_quantization, key_error, parse, ActFn, SampleSize,
    NORM_EPS, NORM_NUM_GROUPS, RGB_CHANNELS,
};
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// diffuse's own `config.json` key of a pruned UNet (`diffuse prune`): the inner width of
/// each pruned ResNet block by weight prefix (`down_blocks.0.resnets.1`, `mid_block.resnets.0`,
/// …): conv1's output channels = norm2's channels = time_emb_proj's rows (each half for
/// `scale_shift`) = conv2's input channels. Absent (or a block not named): `out_channels`, as
/// in diffusers. diffusers' `UNet2DModel` cannot express it and refuses such weights.
pub const RESNET_INNER_KEY: &str = "diffuse_resnet_inner_channels";

const CLASS_NAME: &str = "UNet2DModel";

/// `time_embedding_type`: how a timestep becomes a vector before `time_embedding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeEmbeddingType {
    /// Sinusoids (DDPM, Ho et al. 2020).
    #[default]
    Positional,
    /// Random Fourier features of log σ (score SDE, Song et al. 2021); the output is divided
    /// by σ.
    Fourier,
    /// A learned table with one row per training timestep (`num_train_timesteps`).
    Learned,
}

/// `resnet_time_scale_shift`: how the time embedding enters a ResNet block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResnetTimeScaleShift {
    /// Added to the hidden state.
    #[default]
    Default,
    /// FiLM after norm2: h·(1 + scale) + shift (Dhariwal & Nichol 2021).
    ScaleShift,
}

/// `downsample_type` / `upsample_type`: the resampler of an Attn block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResampleType {
    /// A strided (down) or nearest-upsampling (up) 3×3 conv.
    #[default]
    Conv,
    /// A ResNet block that resamples (BigGAN style).
    Resnet,
}

/// An entry of `down_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    DownBlock2D,
    AttnDownBlock2D,
    ResnetDownsampleBlock2D,
}

impl DownBlockType {
    /// Whether self-attention follows each ResNet.
    pub fn has_attention(self) -> bool {
        match self {
            DownBlockType::AttnDownBlock2D => true,
            DownBlockType::DownBlock2D | DownBlockType::ResnetDownsampleBlock2D => false,
        }
    }

    /// The block's resampler, given `downsample_type` (which only the Attn block reads).
    pub fn resampler(self, downsample_type: ResampleType) -> ResampleType {
        match self {
            DownBlockType::DownBlock2D => ResampleType::Conv,
            DownBlockType::ResnetDownsampleBlock2D => ResampleType::Resnet,
            DownBlockType::AttnDownBlock2D => downsample_type,
        }
    }

    /// Whether the block downsamples with a ResNet rather than a conv.
    pub fn resamples_with_resnet(self, downsample_type: ResampleType) -> bool {
        self.resampler(downsample_type) == ResampleType::Resnet
    }
}

/// An entry of `up_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    UpBlock2D,
    AttnUpBlock2D,
    ResnetUpsampleBlock2D,
}

impl UpBlockType {
    /// Whether self-attention follows each ResNet.
    pub fn has_attention(self) -> bool {
        match self {
            UpBlockType::AttnUpBlock2D => true,
            UpBlockType::UpBlock2D | UpBlockType::ResnetUpsampleBlock2D => false,
        }
    }

    /// The block's resampler, given `upsample_type` (which only the Attn block reads).
    pub fn resampler(self, upsample_type: ResampleType) -> ResampleType {
        match self {
            UpBlockType::UpBlock2D => ResampleType::Conv,
            UpBlockType::ResnetUpsampleBlock2D => ResampleType::Resnet,
            UpBlockType::AttnUpBlock2D => upsample_type,
        }
    }

    /// Whether the block upsamples with a ResNet rather than a conv.
    pub fn resamples_with_resnet(self, upsample_type: ResampleType) -> bool {
        self.resampler(upsample_type) == ResampleType::Resnet
    }
}

/// `mid_block_type` (null: no mid block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MidBlockType {
    UNetMidBlock2D,
}

/// `class_embed_type` (null: a label table when `num_class_embeds` is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassEmbedType {
    /// Labels go through the time projection and their own `TimestepEmbedding`.
    Timestep,
    /// Labels are already `[b, time_embed_dim]` vectors.
    Identity,
}

/// The diffusers `UNet2DModel` config. A missing key takes diffusers' default
/// ([`UNet2DConfig::default`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub sample_size: Option<SampleSize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: TimeEmbeddingType,
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<DownBlockType>,
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: ResampleType,
    pub upsample_type: ResampleType,
    pub dropout: f64,
    pub act_fn: ActFn,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: ResnetTimeScaleShift,
    pub add_attention: bool,
    pub class_embed_type: Option<ClassEmbedType>,
    pub num_class_embeds: Option<usize>,
    pub num_train_timesteps: Option<usize>,
    /// [`RESNET_INNER_KEY`]: the inner widths of pruned ResNet blocks (empty: unpruned).
    #[serde(
        rename = "diffuse_resnet_inner_channels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub resnet_inner_channels: BTreeMap<String, usize>,
    /// `quantization_config` of int8 weights (`crate::quant`): checked when read, never written
    /// back, since `weights::save` and the trainer write float weights.
    #[serde(skip_serializing)]
    pub quantization_config: Option<Value>,
    /// Keys diffuse does not read (`_diffusers_version`, …), kept for saving.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for UNet2DConfig {
    /// diffusers' `UNet2DModel.__init__` defaults.
    fn default() -> Self {
        use DownBlockType::{AttnDownBlock2D, DownBlock2D};
        use UpBlockType::{AttnUpBlock2D, UpBlock2D};
        UNet2DConfig {
            class_name: CLASS_NAME.into(),
            sample_size: None,
            in_channels: RGB_CHANNELS,
            out_channels: RGB_CHANNELS,
            center_input_sample: false,
            time_embedding_type: TimeEmbeddingType::default(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: vec![
                DownBlock2D,
                AttnDownBlock2D,
                AttnDownBlock2D,
                AttnDownBlock2D,
            ],
            mid_block_type: Some(MidBlockType::UNetMidBlock2D),
            up_block_types: vec![AttnUpBlock2D, AttnUpBlock2D, AttnUpBlock2D, UpBlock2D],
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: ResampleType::default(),
            upsample_type: ResampleType::default(),
            dropout: 0.0,
            act_fn: ActFn::default(),
            attention_head_dim: Some(8),
            norm_num_groups: NORM_NUM_GROUPS,
            attn_norm_num_groups: None,
            norm_eps: NORM_EPS,
            resnet_time_scale_shift: ResnetTimeScaleShift::default(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
            resnet_inner_channels: BTreeMap::new(),
            quantization_config: None,
            extra: Map::new(),
        }
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
    /// Every key this config takes, sorted: `UNet2DModel.__init__`'s keys and [`RESNET_INNER_KEY`]. A user's own
    /// config (`diffuse train`'s `[model]`) may use only these.
    pub fn known_keys() -> Vec<String> {
        super::keys_of::<Self>(&[RESNET_INNER_KEY])
    }

    /// Parses `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: UNet2DConfig = parse(text, "UNet", &[CLASS_NAME])?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as diffusers writes it (known keys, then the kept unknown ones).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// Width of the time embedding (`block_out_channels[0]`·4 unless given).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    pub fn class_embedding(&self) -> ClassEmbedding {
        match (self.class_embed_type, self.num_class_embeds) {
            (None, Some(n)) => ClassEmbedding::Table(n),
            (None, None) => ClassEmbedding::None,
            (Some(ClassEmbedType::Timestep), _) => ClassEmbedding::Timestep,
            (Some(ClassEmbedType::Identity), _) => ClassEmbedding::Identity,
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
        let mut out = Vec::new();
        for (i, t) in self.down_block_types.iter().enumerate() {
            for j in 0..self.layers_per_block {
                out.push((format!("down_blocks.{i}.resnets.{j}"), ch[i]));
            }
            if i != n - 1 && t.resamples_with_resnet(self.downsample_type) {
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
            if i != n - 1 && t.resamples_with_resnet(self.upsample_type) {
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
        check_class_name(&self.class_name, &[CLASS_NAME])?;
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
        if self.time_embedding_type == TimeEmbeddingType::Learned
            && self.num_train_timesteps.is_none()
        {
            return bad(
                "num_train_timesteps",
                "required with time_embedding_type \"learned\"".into(),
            );
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

    /// A small valid config with `key` set to `value`.
    fn with(key: &str, value: Value) -> String {
        let mut v = serde_json::json!({"block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8,
            "num_class_embeds": 2});
        v[key] = value;
        v.to_string()
    }

    #[test]
    fn string_options_parse_into_enums_and_write_back_the_same_strings() {
        let mut v: Value = serde_json::from_str(&with("act_fn", "swish".into())).unwrap();
        for (key, value) in [
            ("time_embedding_type", "fourier"),
            ("resnet_time_scale_shift", "scale_shift"),
            ("downsample_type", "resnet"),
            ("upsample_type", "conv"),
            ("class_embed_type", "identity"),
        ] {
            v[key] = value.into();
        }
        v["mid_block_type"] = Value::Null;
        let c = UNet2DConfig::from_json_str(&v.to_string()).unwrap();
        assert_eq!(c.act_fn, ActFn::Swish);
        assert_eq!(c.time_embedding_type, TimeEmbeddingType::Fourier);
        assert_eq!(c.resnet_time_scale_shift, ResnetTimeScaleShift::ScaleShift);
        assert_eq!(c.class_embedding(), ClassEmbedding::Identity);
        assert_eq!(c.mid_block_type, None);
        assert!(c.down_block_types[1].resamples_with_resnet(c.downsample_type));
        assert!(!c.up_block_types[0].resamples_with_resnet(c.upsample_type));
        let back: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        for key in [
            "act_fn",
            "time_embedding_type",
            "resnet_time_scale_shift",
            "downsample_type",
            "upsample_type",
            "class_embed_type",
            "mid_block_type",
            "down_block_types",
            "up_block_types",
        ] {
            assert_eq!(back[key], v[key], "{key}");
        }
        let d: Value = serde_json::from_str(&UNet2DConfig::default().to_json_string()).unwrap();
        assert_eq!(d["time_embedding_type"], "positional");
        assert_eq!(d["resnet_time_scale_shift"], "default");
        assert_eq!(d["act_fn"], "silu");
        assert_eq!(d["mid_block_type"], "UNetMidBlock2D");
    }

    #[test]
    fn unknown_option_values_name_the_key_and_the_allowed_values() {
        for (key, value, allowed) in [
            (
                "time_embedding_type",
                Value::from("sinusoidal"),
                &["positional", "fourier", "learned"][..],
            ),
            (
                "resnet_time_scale_shift",
                "spatial".into(),
                &["default", "scale_shift"],
            ),
            ("act_fn", "gelu".into(), &["silu", "swish"]),
            ("downsample_type", "pool".into(), &["conv", "resnet"]),
            ("upsample_type", "interp".into(), &["conv", "resnet"]),
            (
                "class_embed_type",
                "projection".into(),
                &["timestep", "identity"],
            ),
            (
                "mid_block_type",
                "UNetMidBlock2DCrossAttn".into(),
                &["UNetMidBlock2D"],
            ),
            (
                "up_block_types",
                serde_json::json!(["AttnUpBlock2D", "CrossAttnUpBlock2D"]),
                &["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
            ),
        ] {
            let e = UNet2DConfig::from_json_str(&with(key, value))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("config key `{key}")), "{e}");
            for a in allowed {
                assert!(e.contains(a), "{key}: {a} missing from {e}");
            }
        }
        // `learned` needs the table size.
        let e = UNet2DConfig::from_json_str(&with("time_embedding_type", "learned".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_train_timesteps"), "{e}");
        // A value of the wrong JSON type names its key too.
        let e = UNet2DConfig::from_json_str(&with("layers_per_block", "two".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config key `layers_per_block`"), "{e}");
    }
}

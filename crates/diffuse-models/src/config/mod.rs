//! `config.json` of `UNet2DModel` (`src/diffusers/models/unets/unet_2d.py`), of
//! `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`) and of `DiTTransformer2DModel`
//! (`models/transformers/dit_transformer_2d.py`), with diffusers' keys and defaults. Unknown keys
//! are kept and written back.

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
fn d_in() -> usize {
    3
}
fn d_true() -> bool {
    true
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
fn d_silu() -> String {
    "silu".into()
}
fn d_head() -> Option<usize> {
    Some(8)
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_default() -> String {
    "default".into()
}

/// Sample size: one int or [height, width].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect(Vec<usize>),
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! `config.json` of `UNet2DConditionModel` (`src/diffusers/models/unets/unet_2d_condition.py`),
//! the text-conditioned UNet of Stable Diffusion 1.x/2.x, with diffusers' keys and defaults.
//!
//! Per-block values (`attention_head_dim`, `transformer_layers_per_block`,
//! `cross_attention_dim`, `layers_per_block`) are an int or a list, as diffusers takes them. The
//! head count follows diffusers' naming slip: `num_attention_heads` defaults to
//! `attention_head_dim`, which is therefore the number of heads per block (SD 1.x's 8; SD 2.x's
//! [5, 10, 20, 20]), and each head is `channels / heads` wide.
//!
//! Keys of other model families (SDXL's added embeddings, class embeddings, LCM's
//! `time_cond_proj_dim`, …) are accepted at their defaults only; another value is refused with
//! an error naming the key.

use super::{
    check_class_name, check_groups, key_error, parse, ActFn, ResnetTimeScaleShift, SampleSize,
    NORM_EPS, NORM_NUM_GROUPS,
};
use crate::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const CLASS_NAME: &str = "UNet2DConditionModel";
/// SD's latent channels, diffusers' default `in_channels` / `out_channels` here.
const LATENT_CHANNELS: usize = 4;

/// An entry of `down_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CondDownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

/// An entry of `up_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CondUpBlockType {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

/// `mid_block_type` (null: no mid block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CondMidBlockType {
    UNetMidBlock2DCrossAttn,
}

/// A per-block value: one for every block, or one each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    /// The value of each of `n` blocks (a list of another length is an error naming `key`).
    pub fn values(&self, n: usize, key: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(key_error(
                key,
                format!("{} values for {n} blocks; give one or {n}", v.len()),
            )),
        }
    }
}

/// The diffusers `UNet2DConditionModel` config. A missing key takes diffusers' default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub sample_size: Option<SampleSize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<CondDownBlockType>,
    pub mid_block_type: Option<CondMidBlockType>,
    pub up_block_types: Vec<CondUpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub dropout: f64,
    pub act_fn: ActFn,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<usize>,
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub only_cross_attention: PerBlock<bool>,
    pub dual_cross_attention: bool,
    pub resnet_time_scale_shift: ResnetTimeScaleShift,
    pub time_embedding_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    /// Keys diffuse does not read (`_diffusers_version`, other families' keys at their
    /// defaults, …), kept for saving.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' `UNet2DConditionModel.__init__` defaults (Stable Diffusion 1.x's UNet).
    fn default() -> Self {
        use CondDownBlockType::{CrossAttnDownBlock2D, DownBlock2D};
        use CondUpBlockType::{CrossAttnUpBlock2D, UpBlock2D};
        UNet2DConditionConfig {
            class_name: CLASS_NAME.into(),
            sample_size: None,
            in_channels: LATENT_CHANNELS,
            out_channels: LATENT_CHANNELS,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                CrossAttnDownBlock2D,
                CrossAttnDownBlock2D,
                CrossAttnDownBlock2D,
                DownBlock2D,
            ],
            mid_block_type: Some(CondMidBlockType::UNetMidBlock2DCrossAttn),
            up_block_types: vec![
                UpBlock2D,
                CrossAttnUpBlock2D,
                CrossAttnUpBlock2D,
                CrossAttnUpBlock2D,
            ],
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: ActFn::default(),
            norm_num_groups: NORM_NUM_GROUPS,
            norm_eps: NORM_EPS,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            upcast_attention: false,
            only_cross_attention: PerBlock::One(false),
            dual_cross_attention: false,
            resnet_time_scale_shift: ResnetTimeScaleShift::Default,
            time_embedding_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            extra: Map::new(),
        }
    }
}

/// Keys of other UNet2DConditionModel families that diffuse accepts only at diffusers' default
/// (what the model would need, for the error).
const DEFAULT_ONLY: [(&str, &str); 15] = [
    ("class_embed_type", "class embeddings"),
    ("num_class_embeds", "class embeddings"),
    ("addition_embed_type", "SDXL's added text/time embeddings"),
    ("addition_time_embed_dim", "SDXL's added time embeddings"),
    (
        "encoder_hid_dim",
        "a projection of the encoder's hidden states",
    ),
    (
        "encoder_hid_dim_type",
        "a projection of the encoder's hidden states",
    ),
    ("time_cond_proj_dim", "LCM's guidance embedding"),
    (
        "time_embedding_act_fn",
        "an activation after the time embedding",
    ),
    (
        "timestep_post_act",
        "an activation inside the time embedding",
    ),
    (
        "projection_class_embeddings_input_dim",
        "projected class embeddings",
    ),
    ("class_embeddings_concat", "class embeddings"),
    (
        "mid_block_only_cross_attention",
        "cross-attention-only blocks",
    ),
    (
        "cross_attention_norm",
        "a norm of the encoder's hidden states",
    ),
    (
        "reverse_transformer_layers_per_block",
        "per-layer transformer depths",
    ),
    ("resnet_skip_time_act", "a time activation inside ResNets"),
];

/// Keys with a non-null default that diffuse accepts only at that default.
const FIXED: [(&str, &str); 3] = [
    ("time_embedding_type", "\"positional\""),
    ("attention_type", "\"default\""),
    ("resnet_out_scale_factor", "1.0"),
];

impl UNet2DConditionConfig {
    /// Every key this config takes, sorted: those diffuse reads and those it accepts at their
    /// defaults. A user's own config (`diffuse train`'s `[model]`) may use only these.
    pub fn known_keys() -> Vec<String> {
        let also: Vec<&str> = DEFAULT_ONLY
            .iter()
            .chain(FIXED.iter())
            .map(|(k, _)| *k)
            .collect();
        super::keys_of::<Self>(&also)
    }

    /// Parses `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: UNet2DConditionConfig = parse(text, "UNet2DConditionModel", &[CLASS_NAME])?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// Width of the time embedding (`block_out_channels[0]`·4 unless given).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    pub fn sample_hw(&self) -> Option<(usize, usize)> {
        match &self.sample_size {
            Some(SampleSize::Square(s)) => Some((*s, *s)),
            Some(SampleSize::Rect(v)) if v.len() == 2 => Some((v[0], v[1])),
            _ => None,
        }
    }

    fn n(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Heads of each down block's transformers (diffusers: `num_attention_heads or
    /// attention_head_dim`).
    pub fn heads(&self) -> Result<Vec<usize>> {
        match &self.num_attention_heads {
            Some(h) => h.values(self.n(), "num_attention_heads"),
            None => self
                .attention_head_dim
                .values(self.n(), "attention_head_dim"),
        }
    }

    /// ResNets of each down block (up blocks have one more).
    pub fn layers(&self) -> Result<Vec<usize>> {
        self.layers_per_block.values(self.n(), "layers_per_block")
    }

    /// Transformer layers of each down block's transformers.
    pub fn transformer_layers(&self) -> Result<Vec<usize>> {
        self.transformer_layers_per_block
            .values(self.n(), "transformer_layers_per_block")
    }

    /// Width of the context each down block's cross-attention reads.
    pub fn cross_attention_dims(&self) -> Result<Vec<usize>> {
        self.cross_attention_dim
            .values(self.n(), "cross_attention_dim")
    }

    /// The width of the text encoder's hidden states the UNet takes (the last block's; SD's
    /// blocks all take the same).
    pub fn context_dim(&self) -> usize {
        match &self.cross_attention_dim {
            PerBlock::One(d) => *d,
            PerBlock::Each(v) => v.last().copied().unwrap_or(0),
        }
    }

    /// Checks every value diffuse relies on; errors name the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(key_error(key, msg));
        check_class_name(&self.class_name, &[CLASS_NAME])?;
        let n = self.n();
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
        check_groups(self.norm_num_groups, &self.block_out_channels)?;
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad("in_channels", "channel counts must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return bad(
                "conv_in_kernel",
                "diffuse supports 3×3 conv_in and conv_out only".into(),
            );
        }
        if self.dual_cross_attention {
            return bad(
                "dual_cross_attention",
                "two text encoders' cross-attention (versatile diffusion) is not supported; allowed: false".into(),
            );
        }
        if self
            .only_cross_attention
            .values(n, "only_cross_attention")?
            .contains(&true)
        {
            return bad(
                "only_cross_attention",
                "cross-attention-only blocks are not supported; allowed: false".into(),
            );
        }
        for (i, ((&c, &h), &l)) in self
            .block_out_channels
            .iter()
            .zip(&self.heads()?)
            .zip(&self.layers()?)
            .enumerate()
        {
            if h == 0 || !c.is_multiple_of(h) {
                let key = if self.num_attention_heads.is_some() {
                    "num_attention_heads"
                } else {
                    "attention_head_dim"
                };
                return bad(
                    key,
                    format!("{h} heads do not divide block {i}'s {c} channels (in diffusers this key is the number of heads)"),
                );
            }
            if l == 0 {
                return bad("layers_per_block", "must be at least 1".into());
            }
        }
        if self.transformer_layers()?.contains(&0) {
            return bad("transformer_layers_per_block", "must be at least 1".into());
        }
        if self.cross_attention_dims()?.contains(&0) {
            return bad("cross_attention_dim", "must be at least 1".into());
        }
        for (key, what) in DEFAULT_ONLY {
            match self.extra.get(key) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(v) => {
                    return bad(
                        key,
                        format!(
                            "{v} needs {what}, which diffuse does not implement; allowed: null"
                        ),
                    )
                }
            }
        }
        for (key, default) in FIXED {
            if let Some(v) = self.extra.get(key) {
                let want: Value = serde_json::from_str(default).expect("json");
                if *v != want && !(v.is_number() && v.as_f64() == want.as_f64()) {
                    return bad(
                        key,
                        format!("{v} is not supported by diffuse; allowed: {default}"),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD2: &str = r#"{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0",
        "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false, "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "out_channels": 4, "sample_size": 96,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "use_linear_projection": true, "upcast_attention": true, "class_embed_type": null,
        "num_class_embeds": null}"#;

    #[test]
    fn the_sd2_config_reads_with_heads_from_attention_head_dim() {
        let c = UNet2DConditionConfig::from_json_str(SD2).unwrap();
        assert_eq!(c.heads().unwrap(), vec![5, 10, 20, 20]);
        assert_eq!(c.layers().unwrap(), vec![2; 4]);
        assert_eq!(c.context_dim(), 1024);
        assert_eq!(c.sample_hw(), Some((96, 96)));
        let back: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        assert_eq!(
            back["attention_head_dim"],
            serde_json::json!([5, 10, 20, 20])
        );
        assert_eq!(back["_diffusers_version"], "0.8.0");
        assert_eq!(back["down_block_types"][0], "CrossAttnDownBlock2D");
        let d = UNet2DConditionConfig::default();
        assert_eq!(d.heads().unwrap(), vec![8; 4]);
    }

    #[test]
    fn other_families_are_refused_naming_the_key() {
        let with = |k: &str, v: &str| {
            let mut m: Value = serde_json::from_str(SD2).unwrap();
            m[k] = serde_json::from_str(v).unwrap();
            UNet2DConditionConfig::from_json_str(&m.to_string())
                .unwrap_err()
                .to_string()
        };
        let e = with("addition_embed_type", r#""text_time""#);
        assert!(
            e.contains("addition_embed_type") && e.contains("SDXL"),
            "{e}"
        );
        let e = with("time_cond_proj_dim", "256");
        assert!(e.contains("time_cond_proj_dim"), "{e}");
        let e = with("attention_type", r#""gated""#);
        assert!(e.contains("attention_type"), "{e}");
        let e = with("attention_head_dim", "[5, 10]");
        assert!(
            e.contains("attention_head_dim") && e.contains("2 values"),
            "{e}"
        );
        let e = with("attention_head_dim", "7");
        assert!(e.contains("number of heads"), "{e}");
        let e = with("down_block_types", r#"["SimpleCrossAttnDownBlock2D"]"#);
        assert!(
            e.contains("down_block_types") && e.contains("CrossAttnDownBlock2D"),
            "{e}"
        );
        let e = with("mid_block_type", r#""UNetMidBlock2DSimpleCrossAttn""#);
        assert!(e.contains("mid_block_type"), "{e}");
        // Defaults written out by diffusers are fine.
        let mut m: Value = serde_json::from_str(SD2).unwrap();
        m["time_embedding_type"] = "positional".into();
        m["resnet_out_scale_factor"] = 1.0.into();
        m["addition_embed_type"] = Value::Null;
        UNet2DConditionConfig::from_json_str(&m.to_string()).unwrap();
    }
}

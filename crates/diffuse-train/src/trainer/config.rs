//! The TOML schema of `diffuse train` (`[model]`, `[scheduler]`, `[data]`, `[train]`, `[vae]`,
//! `[eval]`, `[distill]`) and `--set` overrides.

use crate::amp::MixedPrecision;
use crate::lr::LrKind;
use crate::objective::{Reconstruction, SigmaSamplingKind};
use crate::{Error, Result};
use diffuse_core::config::PredictionType;
use diffuse_data::transform::Fit;
use diffuse_models::{AutoencoderKLConfig, DiTTransformer2DConfig, UNet2DConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `[model] type` of a text-conditioned UNet (`UNet2DConditionModel`).
pub const TEXT_UNET: &str = "unet2d_condition";
pub const DEFAULT_SIZE: usize = 32;
pub const DEFAULT_BATCH_SIZE: usize = 32;
pub const DEFAULT_WORKERS: usize = 2;
pub const DEFAULT_LEARNING_RATE: f64 = 1e-4;
pub const DEFAULT_MAX_GRAD_NORM: f64 = 1.0;
pub const DEFAULT_GRADIENT_ACCUMULATION_STEPS: u64 = 1;
pub const DEFAULT_FLOW_LOGIT_STD: f64 = 1.0;
/// EDM's training σ: ln σ ~ N(−1.2, 1.2²) (Karras et al. 2022, Table 1).
pub const DEFAULT_EDM_P_MEAN: f64 = -1.2;
pub const DEFAULT_EDM_P_STD: f64 = 1.2;
pub const DEFAULT_COND_DROPOUT: f64 = 0.1;
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 500;
pub const DEFAULT_KEEP_CHECKPOINTS: usize = 3;
pub const DEFAULT_LOG_EVERY: u64 = 500;
pub const DEFAULT_SAMPLE_STEPS: usize = 25;
pub const DEFAULT_SAMPLE_GUIDANCE: f64 = 2.0;
pub const DEFAULT_MAX_NONFINITE: u32 = 5;
pub const DEFAULT_KL_WEIGHT: f64 = 1e-6;
pub const DEFAULT_EVAL_IMAGES: usize = 256;

/// serde `default = "…"` functions, one per constant.
macro_rules! default_fns {
    ($($f:ident -> $t:ty = $c:expr;)*) => {
        $(fn $f() -> $t {
            $c
        })*
    };
}

default_fns! {
    default_size -> usize = DEFAULT_SIZE;
    default_batch_size -> usize = DEFAULT_BATCH_SIZE;
    default_workers -> usize = DEFAULT_WORKERS;
    default_learning_rate -> f64 = DEFAULT_LEARNING_RATE;
    default_max_grad_norm -> f64 = DEFAULT_MAX_GRAD_NORM;
    default_gradient_accumulation_steps -> u64 = DEFAULT_GRADIENT_ACCUMULATION_STEPS;
    default_flow_logit_std -> f64 = DEFAULT_FLOW_LOGIT_STD;
    default_edm_p_mean -> f64 = DEFAULT_EDM_P_MEAN;
    default_edm_p_std -> f64 = DEFAULT_EDM_P_STD;
    default_cond_dropout -> f64 = DEFAULT_COND_DROPOUT;
    default_checkpoint_every -> u64 = DEFAULT_CHECKPOINT_EVERY;
    default_keep_checkpoints -> usize = DEFAULT_KEEP_CHECKPOINTS;
    default_log_every -> u64 = DEFAULT_LOG_EVERY;
    default_sample_steps -> usize = DEFAULT_SAMPLE_STEPS;
    default_sample_guidance -> f64 = DEFAULT_SAMPLE_GUIDANCE;
    default_max_nonfinite -> u32 = DEFAULT_MAX_NONFINITE;
    default_kl_weight -> f64 = DEFAULT_KL_WEIGHT;
    default_eval_images -> usize = DEFAULT_EVAL_IMAGES;
}

/// serde's default for flags that are on unless turned off.
pub(crate) fn d_true() -> bool {
    true
}

/// `train.prediction_type`: what the network predicts (diffusers' names; `flow` is flow
/// matching, also accepted as `flow_prediction`; `edm` is EDM's preconditioned F, which an
/// EDM scheduler config calls `epsilon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    #[default]
    Epsilon,
    #[serde(alias = "original_sample")]
    Sample,
    VPrediction,
    #[serde(alias = "flow_prediction")]
    Flow,
    Edm,
}

impl Prediction {
    /// The scheduler's prediction type (EDM's F is `epsilon` in an EDM scheduler config).
    pub fn to_core(self) -> PredictionType {
        match self {
            Prediction::Epsilon | Prediction::Edm => PredictionType::Epsilon,
            Prediction::Sample => PredictionType::Sample,
            Prediction::VPrediction => PredictionType::VPrediction,
            Prediction::Flow => PredictionType::Flow,
        }
    }

    /// The training objective of a model whose scheduler predicts `p` (not EDM, whose scheduler
    /// says `epsilon`).
    pub fn from_core(p: PredictionType) -> Self {
        match p {
            PredictionType::Epsilon => Prediction::Epsilon,
            PredictionType::Sample => Prediction::Sample,
            PredictionType::VPrediction => Prediction::VPrediction,
            PredictionType::Flow => Prediction::Flow,
        }
    }
}

/// `data.fit`: how images of another aspect or size become `data.size`².
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFit {
    #[default]
    Pad,
    Resize,
    #[serde(alias = "center-crop")]
    CenterCrop,
}

impl From<ImageFit> for Fit {
    fn from(f: ImageFit) -> Fit {
        match f {
            ImageFit::Pad => Fit::Pad,
            ImageFit::Resize => Fit::Resize,
            ImageFit::CenterCrop => Fit::CenterCrop,
        }
    }
}

/// The name a config value serializes to (`"bf16"` for [`MixedPrecision::Bf16`]), for messages.
pub(crate) fn config_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => e.to_string(),
    }
}

/// serde's "unknown variant `x`, expected one of `a`, `b`" as this crate says it: "unknown
/// value "x"; allowed: a, b" (other messages unchanged).
fn allowed_values(message: &str) -> String {
    let Some(at) = message.find("unknown variant `") else {
        return message.to_string();
    };
    let rest = &message[at + "unknown variant `".len()..];
    let Some((value, tail)) = rest.split_once('`') else {
        return message.to_string();
    };
    let (line, after) = tail.split_once('\n').unwrap_or((tail, ""));
    let allowed: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
    let mut out = format!(
        "{}unknown value {value:?}; allowed: {}",
        &message[..at],
        allowed.join(", ")
    );
    if !after.is_empty() {
        out.push('\n');
        out.push_str(after);
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `mnist`, `fashion-mnist`, `cifar10`, or a folder.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Instead of `name`: a latent cache (`diffuse data encode`); the UNet then trains on its
    /// latents and the output is a latent pipeline with the cache's VAE (`size`, `fit`,
    /// `hflip`, `workers` and `skip_bad` do not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<String>,
    /// Instead of `name`: reflow pairs (`diffuse distill reflow`, `OUTPUT/pairs`): (noise, x₀,
    /// label) triples from a teacher's ODE; the flow loss then uses each x₀'s own noise (latent
    /// pairs carry their VAE; `size`, `fit`, `hflip`, `workers` and `skip_bad` do not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<String>,
    /// With `name`: an AutoencoderKL folder whose encoder turns each batch of images into
    /// latents as it is drawn (as diffusers' `train_text_to_image.py` does); the output is a
    /// latent pipeline with this VAE. Required for text-to-image (a StableDiffusionPipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    #[serde(default = "default_size")]
    pub size: usize,
    #[serde(default)]
    pub fit: ImageFit,
    #[serde(default)]
    pub hflip: bool,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub skip_bad: bool,
    /// Transparent pixels of image files: `white` (default), `black`, `gray`, `#rrggbb`, or
    /// `alpha` to keep a 4th channel.
    #[serde(default)]
    pub background: diffuse_data::image_io::Background,
    /// Train class-conditionally when the data set has labels.
    #[serde(default = "d_true")]
    pub class_conditional: bool,
}

impl DataSection {
    /// How the data set's image files become samples.
    pub fn open_options(&self) -> diffuse_data::datasets::OpenOptions {
        diffuse_data::datasets::OpenOptions {
            background: self.background,
            size: Some(self.size),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub max_steps: u64,
    /// A wall-clock budget in minutes for the whole run (resumed invocations included): after
    /// its first steps are timed the run plans how many fit (at most `max_steps`) and ends its
    /// LR schedule there, so the model is annealed when the time is up. The plan and the time
    /// spent are kept in each checkpoint; reaching the budget before the plan stops the run
    /// with a checkpoint and the output pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub lr_scheduler: LrKind,
    #[serde(default)]
    pub lr_warmup_steps: u64,
    #[serde(default)]
    pub adam_beta1: Option<f64>,
    #[serde(default)]
    pub adam_beta2: Option<f64>,
    #[serde(default)]
    pub adam_epsilon: Option<f64>,
    #[serde(default)]
    pub adam_weight_decay: Option<f64>,
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Micro-batches per optimizer step (gradients averaged); 1 = none.
    #[serde(default = "default_gradient_accumulation_steps")]
    pub gradient_accumulation_steps: u64,
    /// Recompute each block's activations in backward instead of keeping them (diffusers'
    /// `--gradient_checkpointing`): UNet and VAE ResNets, attentions and resamplers, DiT
    /// transformer blocks. Same gradients; less memory for about one more forward per step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    #[serde(default)]
    pub prediction_type: Prediction,
    #[serde(default)]
    pub snr_gamma: Option<f64>,
    /// Flow matching: how σ is drawn, `logit_normal` (SD3) or `uniform` (rectified flow); it
    /// is then warped by the scheduler's `shift`, as the FlowMatch samplers warp theirs.
    #[serde(default)]
    pub flow_sigma_sampling: SigmaSamplingKind,
    /// Mean and std of the logit-normal σ (a positive mean trains more at high noise).
    #[serde(default)]
    pub flow_logit_mean: f64,
    #[serde(default = "default_flow_logit_std")]
    pub flow_logit_std: f64,
    /// EDM: ln σ ~ N(edm_p_mean, edm_p_std²) (the paper's P_mean, P_std).
    #[serde(default = "default_edm_p_mean")]
    pub edm_p_mean: f64,
    #[serde(default = "default_edm_p_std")]
    pub edm_p_std: f64,
    /// Start from these weights instead of a random init: a pipeline folder (its EMA UNet when
    /// it has `unet_ema/`) or a UNet folder; every tensor must match `[model]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Probability of training on the null class (classifier-free guidance).
    #[serde(default = "default_cond_dropout")]
    pub cond_dropout: f64,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Write a grid of EMA samples (fixed seed, every class) to `samples/step-N.png` every this
    /// many steps and at the end; 0 disables.
    #[serde(default)]
    pub sample_every: u64,
    /// Sampling steps for those grids.
    #[serde(default = "default_sample_steps")]
    pub sample_steps: usize,
    /// Guidance scale for the grids of class-conditional models.
    #[serde(default = "default_sample_guidance")]
    pub sample_guidance: f64,
    /// Guide the grids only at noise levels σ in `[lo, hi]`; recorded with the scale as the
    /// pipeline's default.
    #[serde(default)]
    pub sample_guidance_interval: Option<diffuse_core::denoiser::GuidanceInterval>,
    /// Stop after this many non-finite losses in a row.
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite: u32,
    #[serde(default)]
    pub ema_decay: Option<f64>,
    #[serde(default)]
    pub ema_power: Option<f64>,
    /// Post-hoc EMA (EDM2): keep power-function EMAs of these relative widths σ_rel (EDM2:
    /// [0.05, 0.10]) and snapshot them into `phema/` at every checkpoint; `diffuse ema`
    /// reconstructs any width afterwards. Empty: off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posthoc_ema: Vec<f64>,
    /// Forward precision, accelerate's names: "no" (f32), "bf16" or "fp16" (with dynamic loss
    /// scaling); weights, gradients, AdamW and EMA stay f32 ([`crate::amp`]).
    #[serde(default)]
    pub mixed_precision: MixedPrecision,
}

/// VAE training (`[vae]`): `[model]` is then an AutoencoderKL config. Labels, `[scheduler]`
/// and the diffusion keys of `[train]` are not used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeSection {
    /// Reconstruction loss: l1 or l2 (mean over pixels).
    #[serde(default)]
    pub loss: Reconstruction,
    /// β: weight of KL(q(z|x) ‖ N(0, I)) (per-sample sum, batch mean); diffusers' script uses 1e-6.
    #[serde(default = "default_kl_weight")]
    pub kl_weight: f64,
    /// β rises linearly from 0 over this many steps.
    #[serde(default)]
    pub kl_warmup_steps: u64,
    /// Held-out images (the data set's test split) for the PSNR and SSIM logged with every
    /// reconstruction grid (`train.sample_every`); 0 disables both.
    #[serde(default = "default_eval_images")]
    pub eval_images: usize,
}

/// The whole `diffuse train` configuration (`examples/*.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A diffusers UNet2DModel config (class labels get one extra "null" class when needed);
    /// with `type = "dit"` a DiTTransformer2DModel config (`num_embeds_ada_norm` is set from the
    /// data: its classes, or 0 for an unconditional model; the null class is the extra last
    /// row); or an AutoencoderKL config with `[vae]`.
    pub model: Map<String, Value>,
    /// A diffusers scheduler config (default: DDPMScheduler's).
    #[serde(default)]
    pub scheduler: Map<String, Value>,
    pub data: DataSection,
    pub train: TrainSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<VaeSection>,
    /// Metrics of EMA samples every N steps (diffusion models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<crate::eval_hook::EvalSection>,
    /// Train as the progressive-distillation student of a teacher pipeline (images or a
    /// latent cache as data; `[scheduler]` DDIM with the student's `num_inference_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<crate::progressive::DistillSection>,
    /// Train as a consistency model: distilled from a teacher (CD) or tuned from the model's
    /// own weights (ECT); `[scheduler]` LCMScheduler or a flow scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<crate::consistency::ConsistencySection>,
    /// Text-to-image (`[model] type = "unet2d_condition"`): the CLIP text encoder trained with
    /// the UNet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<crate::text::TextEncoderSection>,
    /// Text-to-image: how prompts are made from the data set's captions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captions: Option<crate::text::CaptionsSection>,
}

impl TrainConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: TrainConfig = toml::from_str(text).map_err(|e| {
            Error::Invalid(format!("config: {}", allowed_values(e.to_string().trim())))
        })?;
        config.check_model_keys()?;
        Ok(config)
    }

    /// Every key of `[model]` must be one its model takes (the user's own config, unlike a
    /// model's `config.json`, whose unknown keys are ignored as diffusers does): a typo such as
    /// `block_out_channel` is named, with the closest key and the allowed ones. Keys starting
    /// with `_` (`_class_name`, `_diffusers_version`) are diffusers' own and pass.
    pub fn check_model_keys(&self) -> Result<()> {
        let (kind, mut allowed) = match (&self.vae, self.model.get("type")) {
            (Some(_), _) => ("vae", AutoencoderKLConfig::known_keys()),
            (None, Some(Value::String(t))) if t == "dit" => {
                ("dit", DiTTransformer2DConfig::known_keys())
            }
            (None, None) => ("unet", UNet2DConfig::known_keys()),
            (None, Some(Value::String(t))) if t == "unet" => ("unet", UNet2DConfig::known_keys()),
            (None, Some(Value::String(t))) if t == TEXT_UNET => (
                TEXT_UNET,
                diffuse_models::UNet2DConditionConfig::known_keys(),
            ),
            // A bad `type` gets its own error when the network is built.
            (None, Some(_)) => return Ok(()),
        };
        if kind != "vae" {
            allowed.push("type".into());
            allowed.sort();
        }
        for key in self.model.keys() {
            if key.starts_with('_') || allowed.contains(key) {
                continue;
            }
            let hint = closest(key, &allowed)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "config: [model] ({kind}): unknown key `{key}`{hint}; allowed: {}",
                allowed.join(", ")
            )));
        }
        Ok(())
    }

    /// Whether the run trains a text-to-image model (`[model] type = "unet2d_condition"`), and
    /// that what it needs is there and what cannot go with it is not (checked before a run
    /// claims its output folder).
    pub fn check_text(&self) -> Result<bool> {
        let config = self;
        let text = config.model.get("type").and_then(Value::as_str) == Some(TEXT_UNET);
        let d = &config.data;
        if !text {
            if config.text_encoder.is_some() || config.captions.is_some() {
                return Err(Error::Invalid(format!(
                    "[text_encoder] and [captions] train a text-to-image model: set [model] type = \"{TEXT_UNET}\""
                )));
            }
            return Ok(false);
        }
        let refuse = |what: &str| {
            Err(Error::Invalid(format!(
                "[model] type = \"{TEXT_UNET}\" (text-to-image) cannot go with {what}"
            )))
        };
        if config.vae.is_some() {
            return refuse("[vae]");
        }
        if config.distill.is_some() || config.consistency.is_some() {
            return refuse("[distill] or [consistency]");
        }
        if config.eval.is_some() {
            return refuse(
                "[eval] (its metrics sample classes; evaluate prompts with `diffuse sample --prompt`)",
            );
        }
        if config.train.mixed_precision != crate::amp::MixedPrecision::No {
            return refuse("train.mixed_precision (the text encoder trains in f32)");
        }
        if config.train.init_from.is_some() {
            return refuse("train.init_from (resume a text-to-image run with --resume)");
        }
        if d.name.is_empty() || d.vae.as_deref().is_none_or(str::is_empty) {
            return Err(Error::Invalid(format!(
                "[model] type = \"{TEXT_UNET}\" trains on a captioned image set through a VAE, as Stable Diffusion: give data.name (e.g. \"openmoji\") and data.vae (an AutoencoderKL folder, e.g. the vae/ of `diffuse data encode`, which records the data's scaling factor)"
            )));
        }
        Ok(true)
    }

    /// Applies `key.path=value` overrides (`train.max_steps=100`, `data.batch_size=8`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("--set {assignment:?}: expected key=value")))?;
        let mut doc = serde_json::to_value(&*self).expect("serializable");
        let parsed: Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|t| serde_json::to_value(&t["v"]).ok())
            .unwrap_or_else(|| Value::from(value));
        let mut slot = &mut doc;
        for part in key.split('.') {
            slot = slot
                .as_object_mut()
                .ok_or_else(|| Error::Invalid(format!("--set {key}: not a table")))?
                .entry(part.to_string())
                .or_insert(Value::Null);
        }
        *slot = parsed;
        *self = serde_json::from_value(doc).map_err(|e| {
            Error::Invalid(format!("--set {key}: {}", allowed_values(&e.to_string())))
        })?;
        self.check_model_keys()
            .map_err(|e| Error::Invalid(format!("--set {key}: {e}")))
    }
}

/// The key of `allowed` nearest to `key` by edit distance, if it is near enough to be a typo
/// (at most a third of the key's length).
fn closest<'a>(key: &str, allowed: &'a [String]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|k| (edit_distance(key, k), k.as_str()))
        .filter(|&(d, _)| d <= key.len().div_ceil(3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (insertions, deletions, substitutions) over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\n[data]\nname = \"mnist\"\n[train]\nmax_steps = 1\n";

    /// `[section] key = value` added to a minimal config: the error of parsing it.
    fn toml_error(section: &str, key: &str, value: &str) -> String {
        let text = if section == "vae" {
            format!("{MINIMAL}[vae]\n{key} = {value}\n")
        } else {
            MINIMAL.replace(
                &format!("[{section}]\n"),
                &format!("[{section}]\n{key} = {value}\n"),
            )
        };
        TrainConfig::from_toml(&text).unwrap_err().to_string()
    }

    #[test]
    fn bad_enum_values_name_the_key_and_the_allowed_values() {
        for (section, key, allowed) in [
            (
                "train",
                "lr_scheduler",
                "constant, constant_with_warmup, linear, cosine",
            ),
            ("train", "mixed_precision", "no, bf16, fp16"),
            (
                "train",
                "prediction_type",
                "epsilon, sample, v_prediction, flow, edm",
            ),
            ("train", "flow_sigma_sampling", "logit_normal, uniform"),
            ("data", "fit", "pad, resize, center_crop"),
            ("vae", "loss", "l1, l2"),
        ] {
            for e in [
                toml_error(section, key, "\"bogus\""),
                // `--set` on a config that has the section.
                TrainConfig::from_toml(&format!("{MINIMAL}[vae]\n"))
                    .unwrap()
                    .set(&format!("{section}.{key}=\"bogus\""))
                    .map(|_| ())
                    .unwrap_err()
                    .to_string(),
            ] {
                assert!(e.contains(key), "{e}");
                assert!(e.contains("\"bogus\"") && e.contains("allowed: "), "{e}");
                // Every value is listed (aliases such as `flow_prediction` too).
                assert!(allowed.split(", ").all(|a| e.contains(a)), "{e}");
            }
        }
    }

    #[test]
    fn enums_keep_their_config_strings() {
        let text =
            "[model]\n[data]\nname = \"mnist\"\nfit = \"center-crop\"\n[train]\nmax_steps = 1\n\
                    lr_scheduler = \"constant_with_warmup\"\nmixed_precision = \"bf16\"\n\
                    prediction_type = \"flow_prediction\"\nflow_sigma_sampling = \"uniform\"\n\
                    [vae]\nloss = \"l2\"\n";
        let c = TrainConfig::from_toml(text).unwrap();
        assert_eq!(c.train.prediction_type, Prediction::Flow);
        assert_eq!(c.data.fit, ImageFit::CenterCrop);
        let saved = toml::to_string(&c).unwrap();
        for line in [
            "fit = \"center_crop\"",
            "lr_scheduler = \"constant_with_warmup\"",
            "mixed_precision = \"bf16\"",
            "prediction_type = \"flow\"",
            "flow_sigma_sampling = \"uniform\"",
            "loss = \"l2\"",
        ] {
            assert!(saved.contains(line), "{line} not in {saved}");
        }
        // Defaults serialize as before.
        let d = toml::to_string(&TrainConfig::from_toml(MINIMAL).unwrap()).unwrap();
        for line in [
            "fit = \"pad\"",
            "lr_scheduler = \"cosine\"",
            "mixed_precision = \"no\"",
            "prediction_type = \"epsilon\"",
            "flow_sigma_sampling = \"logit_normal\"",
        ] {
            assert!(d.contains(line), "{line} not in {d}");
        }
    }

    #[test]
    fn eval_features_is_an_enum_naming_key_and_allowed_values() {
        use crate::eval_hook::FeatureKind;
        let with = |v: &str| format!("{MINIMAL}[eval]\nevery = 5\nfeatures = {v}\n");
        let c = TrainConfig::from_toml(&with("\"inception\"")).unwrap();
        assert_eq!(c.eval.as_ref().unwrap().features, FeatureKind::Inception);
        assert!(toml::to_string(&c)
            .unwrap()
            .contains("features = \"inception\""));
        let d = TrainConfig::from_toml(&format!("{MINIMAL}[eval]\nevery = 5\n")).unwrap();
        assert_eq!(d.eval.unwrap().features, FeatureKind::Mnist);
        let mut c = c;
        for e in [
            TrainConfig::from_toml(&with("\"vgg\""))
                .unwrap_err()
                .to_string(),
            c.set("eval.features=\"vgg\"").unwrap_err().to_string(),
        ] {
            assert!(e.contains("features"), "{e}");
            assert!(e.contains("unknown feature net \"vgg\""), "{e}");
            assert!(e.contains("allowed: mnist, inception"), "{e}");
        }
    }

    #[test]
    fn distill_method_is_an_enum_naming_key_and_allowed_values() {
        use crate::progressive::DistillMethod;
        let with = |v: &str| format!("{MINIMAL}[distill]\nmethod = {v}\nteacher = \"t\"\n");
        let c = TrainConfig::from_toml(&with("\"progressive\"")).unwrap();
        assert_eq!(
            c.distill.as_ref().unwrap().method,
            DistillMethod::Progressive
        );
        assert!(toml::to_string(&c)
            .unwrap()
            .contains("method = \"progressive\""));
        let mut c = c;
        for e in [
            TrainConfig::from_toml(&with("\"reflow\""))
                .unwrap_err()
                .to_string(),
            c.set("distill.method=\"reflow\"").unwrap_err().to_string(),
        ] {
            assert!(e.contains("method"), "{e}");
            assert!(
                e.contains("\"reflow\"") && e.contains("allowed: progressive"),
                "{e}"
            );
        }
    }

    /// An unknown `[model]` key is named with the closest allowed key and the allowed list;
    /// every example's `[model]` passes; `_` keys pass; `--set` and reflow students check too.
    #[test]
    fn unknown_model_keys_are_named_with_the_closest_one() {
        let cfg = |model: &str, extra: &str| {
            TrainConfig::from_toml(&format!(
                "[model]\n{model}\n[data]\nname = \"mnist\"\n[train]\nmax_steps = 1\n{extra}"
            ))
        };
        for (model, extra, kind, key, near) in [
            (
                "block_out_channel = [32, 64]",
                "",
                "unet",
                "block_out_channel",
                "block_out_channels",
            ),
            (
                "type = \"unet\"\nattn_head_dim = 8",
                "",
                "unet",
                "attn_head_dim",
                "attention_head_dim",
            ),
            (
                "type = \"dit\"\nnum_layer = 2",
                "",
                "dit",
                "num_layer",
                "num_layers",
            ),
            (
                "latent_channel = 4",
                "[vae]\n",
                "vae",
                "latent_channel",
                "latent_channels",
            ),
        ] {
            let e = cfg(model, extra).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "[model] ({kind}): unknown key `{key}` (did you mean `{near}`?)"
                )) && e.contains("allowed: ")
                    && !e.contains('\n'),
                "{e}"
            );
        }
        // Far from every key: no guess, still the list.
        let e = cfg("wibble = 1", "").unwrap_err().to_string();
        assert!(
            e.contains("unknown key `wibble`; allowed: ") && e.contains("block_out_channels"),
            "{e}"
        );
        // `type` is no AutoencoderKL key.
        let e = cfg("type = \"unet\"", "[vae]\n").unwrap_err().to_string();
        assert!(e.contains("unknown key `type`"), "{e}");
        // Every key diffuse reads, and diffusers' private keys, pass.
        for (model, extra) in [
            (
                "_class_name = \"UNet2DModel\"\n_diffusers_version = \"0.42.1\"\nblock_out_channels = [32]\n\
                 attention_head_dim = 8\ndiffuse_resnet_inner_channels = {}\nnum_train_timesteps = 10",
                "",
            ),
            ("type = \"dit\"\nnum_attention_heads = 2\nnorm_eps = 1e-6", ""),
            ("latents_mean = [0.0]\nscaling_factor = 0.5\nforce_upcast = false", "[vae]\n"),
        ] {
            cfg(model, extra).unwrap();
        }
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for f in std::fs::read_dir(examples).unwrap().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap();
            let sections = |name: &str| text.lines().any(|l| l.trim() == name);
            if f.path().extension().is_some_and(|e| e == "toml")
                && sections("[model]")
                && sections("[train]")
            {
                TrainConfig::from_toml(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
            }
        }
        let mut c = TrainConfig::from_toml(MINIMAL).unwrap();
        c.set("model.block_out_channels=[32]").unwrap();
        let e = c
            .set("model.block_out_channel=[32]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--set model.block_out_channel") && e.contains("`block_out_channels`"),
            "{e}"
        );
        let mut t: toml::Table = toml::from_str(MINIMAL).unwrap();
        t["model"] = toml::Value::Table(toml::from_str("layers_per_blok = 1").unwrap());
        let e = crate::reflow::into_config(t).unwrap_err().to_string();
        assert!(e.contains("`layers_per_block`"), "{e}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}

//! The TOML schema of `diffuse train` (`[model]`, `[scheduler]`, `[data]`, `[train]`, `[vae]`,
//! `[eval]`, `[distill]`) and `--set` overrides.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn d_batch() -> usize {
    32
}
fn d_workers() -> usize {
    2
}
fn d_size() -> usize {
    32
}
fn d_fit() -> String {
    "pad".into()
}
fn d_lr() -> f64 {
    1e-4
}
fn d_sched() -> String {
    "cosine".into()
}
fn d_pred() -> String {
    "epsilon".into()
}
fn d_norm() -> f64 {
    1.0
}
fn d_every() -> u64 {
    500
}
fn d_keep() -> usize {
    3
}
fn d_nan() -> u32 {
    5
}
fn d_true() -> bool {
    true
}
fn d_dropout() -> f64 {
    0.1
}
fn d_one() -> u64 {
    1
}
fn d_sample_steps() -> usize {
    25
}
fn d_guidance() -> f64 {
    2.0
}
fn d_rec() -> String {
    "l1".into()
}
fn d_kl() -> f64 {
    1e-6
}
fn d_eval_images() -> usize {
    256
}
fn d_logit_normal() -> String {
    "logit_normal".into()
}
fn d_unit() -> f64 {
    1.0
}
fn d_no() -> String {
    "no".into()
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
    #[serde(default = "d_size")]
    pub size: usize,
    #[serde(default = "d_fit")]
    pub fit: String,
    #[serde(default)]
    pub hflip: bool,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_workers")]
    pub workers: usize,
    #[serde(default)]
    pub skip_bad: bool,
    /// Train class-conditionally when the data set has labels.
    #[serde(default = "d_true")]
    pub class_conditional: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub max_steps: u64,
    /// Stop (with a checkpoint and the output pipeline) after this many minutes of this
    /// invocation, for comparisons at the same wall-clock budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_sched")]
    pub lr_scheduler: String,
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
    #[serde(default = "d_norm")]
    pub max_grad_norm: f64,
    /// Micro-batches per optimizer step (gradients averaged); 1 = none.
    #[serde(default = "d_one")]
    pub gradient_accumulation_steps: u64,
    /// Recompute each block's activations in backward instead of keeping them (diffusers'
    /// `--gradient_checkpointing`): UNet and VAE ResNets, attentions and resamplers, DiT
    /// transformer blocks. Same gradients; less memory for about one more forward per step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// epsilon, sample, v_prediction, flow
    #[serde(default = "d_pred")]
    pub prediction_type: String,
    #[serde(default)]
    pub snr_gamma: Option<f64>,
    /// Flow matching: how σ is drawn, `logit_normal` (SD3) or `uniform` (rectified flow); it
    /// is then warped by the scheduler's `shift`, as the FlowMatch samplers warp theirs.
    #[serde(default = "d_logit_normal")]
    pub flow_sigma_sampling: String,
    /// Mean and std of the logit-normal σ (a positive mean trains more at high noise).
    #[serde(default)]
    pub flow_logit_mean: f64,
    #[serde(default = "d_unit")]
    pub flow_logit_std: f64,
    /// Start from these weights instead of a random init: a pipeline folder (its EMA UNet when
    /// it has `unet_ema/`) or a UNet folder; every tensor must match `[model]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Probability of training on the null class (classifier-free guidance).
    #[serde(default = "d_dropout")]
    pub cond_dropout: f64,
    #[serde(default = "d_every")]
    pub checkpoint_every: u64,
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    #[serde(default = "d_every")]
    pub log_every: u64,
    /// Write a grid of EMA samples (fixed seed, every class) to `samples/step-N.png` every this
    /// many steps and at the end; 0 disables.
    #[serde(default)]
    pub sample_every: u64,
    /// Sampling steps for those grids.
    #[serde(default = "d_sample_steps")]
    pub sample_steps: usize,
    /// Guidance scale for the grids of class-conditional models.
    #[serde(default = "d_guidance")]
    pub sample_guidance: f64,
    /// Stop after this many non-finite losses in a row.
    #[serde(default = "d_nan")]
    pub max_nonfinite: u32,
    #[serde(default)]
    pub ema_decay: Option<f64>,
    #[serde(default)]
    pub ema_power: Option<f64>,
    /// Forward precision, accelerate's names: "no" (f32), "bf16" or "fp16" (with dynamic loss
    /// scaling); weights, gradients, AdamW and EMA stay f32 ([`crate::amp`]).
    #[serde(default = "d_no")]
    pub mixed_precision: String,
}

/// VAE training (`[vae]`): `[model]` is then an AutoencoderKL config. Labels, `[scheduler]`
/// and the diffusion keys of `[train]` are not used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeSection {
    /// Reconstruction loss: l1 or l2 (mean over pixels).
    #[serde(default = "d_rec")]
    pub loss: String,
    /// β: weight of KL(q(z|x) ‖ N(0, I)) (per-sample sum, batch mean); diffusers' script uses 1e-6.
    #[serde(default = "d_kl")]
    pub kl_weight: f64,
    /// β rises linearly from 0 over this many steps.
    #[serde(default)]
    pub kl_warmup_steps: u64,
    /// Held-out images (the data set's test split) for the PSNR and SSIM logged with every
    /// reconstruction grid (`train.sample_every`); 0 disables both.
    #[serde(default = "d_eval_images")]
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
}

impl TrainConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("config: {}", e.to_string().trim())))
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
        *self =
            serde_json::from_value(doc).map_err(|e| Error::Invalid(format!("--set {key}: {e}")))?;
        Ok(())
    }
}

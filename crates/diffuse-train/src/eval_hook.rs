//! Evaluation during training (`[eval]` in the training config): every N steps the EMA weights
//! generate a fixed sample budget (fixed seed, classes in turn), and `diffuse_eval` measures it
//! against real images whose features are computed once at the start — FID/KID/precision-recall
//! with the MNIST classifier or the FID Inception, class accuracy and the IS-style score. The
//! values go to TensorBoard (`eval/*`) and the metrics log with that step. lucidrains'
//! `Trainer` computes FID the same way (`calculate_fid_every`); diffusers' scripts have none.

use crate::{Error, Result};
use candle_core::Device;
use diffuse_core::config::SchedulerConfig;
use diffuse_core::sampler::Sampler;
use diffuse_data::datasets::{self, Split};
use diffuse_eval::classifier::MnistClassifier;
use diffuse_eval::evaluate::{evaluate, EvalOptions, Metric, Reference};
use diffuse_eval::features::FeatureNet;
use diffuse_eval::images::{DatasetImages, ImageBatch, MemoryImages};
use diffuse_eval::inception::InceptionV3;
use diffuse_eval::metrics::Features;
use diffuse_eval::resize::ResizeMode;
use diffuse_models::net::Network;
use diffuse_models::pipeline::{decode_latents, generate, GenerateOptions};
use diffuse_models::AutoencoderKL;
use serde::{Deserialize, Serialize};

pub const DEFAULT_NUM_SAMPLES: usize = 500;
pub const DEFAULT_NUM_REAL: usize = 10_000;
pub const DEFAULT_STEPS: usize = 20;

fn default_num_samples() -> usize {
    DEFAULT_NUM_SAMPLES
}
fn default_num_real() -> usize {
    DEFAULT_NUM_REAL
}
fn default_steps() -> usize {
    DEFAULT_STEPS
}

/// `[eval] features`: the feature net of fid/kid/pr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum FeatureKind {
    /// The embedded MNIST classifier's penultimate layer.
    #[default]
    Mnist,
    /// The FID Inception's pool3 (needs `diffuse eval fetch-inception` once).
    Inception,
}

impl FeatureKind {
    pub const ALL: [FeatureKind; 2] = [FeatureKind::Mnist, FeatureKind::Inception];

    /// The config string.
    pub fn name(self) -> &'static str {
        match self {
            FeatureKind::Mnist => "mnist",
            FeatureKind::Inception => "inception",
        }
    }
}

impl TryFrom<String> for FeatureKind {
    type Error = String;

    /// An unknown name is an error naming the key and the allowed values.
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let allowed: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "features: unknown feature net {s:?}; allowed: {}",
                    allowed.join(", ")
                )
            })
    }
}

/// `[eval]`: what to measure during training and how often.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Evaluate every this many optimizer steps and at the last step; 0 disables.
    pub every: u64,
    /// Generated images per evaluation (classes in turn for class-conditional models).
    #[serde(default = "default_num_samples")]
    pub num_samples: usize,
    /// Comma-separated `fid, kid, pr, cls, is`; default: fid and is, plus cls for
    /// class-conditional models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Feature net of fid/kid/pr: `mnist` (the embedded classifier) or `inception` (needs
    /// `diffuse eval fetch-inception` once).
    #[serde(default)]
    pub features: FeatureKind,
    /// Real images: a data set name or a folder; default `data.name` (required with
    /// `data.latents`). Fitted to the generated size as training fits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<String>,
    /// The first N real images of the training split.
    #[serde(default = "default_num_real")]
    pub num_real: usize,
    /// A scheduler class name or alias (`ddim`, `dpmpp_2m`, `euler`, …); default: DDIM with
    /// trailing spacing, or flow-matching Euler for flow models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Default: `train.sample_guidance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    #[serde(default)]
    pub seed: u64,
}

/// The feature net, the real features and the settings, prepared once per run.
pub(crate) struct EvalHook {
    section: EvalSection,
    metrics: Vec<Metric>,
    features: Option<FeatureNet>,
    classifier: Option<MnistClassifier>,
    /// Features of the real images (0×0 when no metric needs them).
    real: Features,
    sampler: Sampler,
    guidance: f64,
}

impl EvalHook {
    /// Checks the section against the run and computes the real features. `classes`: the
    /// data set's classes for class-conditional training; `size`: the generated image size.
    pub(crate) fn new(
        section: &EvalSection,
        default_real: Option<&str>,
        classes: Option<usize>,
        size: usize,
        sched_cfg: &SchedulerConfig,
        default_guidance: f64,
        device: &Device,
    ) -> Result<Self> {
        let bad = |m: String| Error::Invalid(format!("[eval] {m}"));
        if section.num_samples < 2 {
            return Err(bad("num_samples must be at least 2".into()));
        }
        let metrics = match &section.metrics {
            Some(list) => Metric::parse_list(list).map_err(|e| bad(e.to_string()))?,
            None => {
                let mut m = vec![Metric::Fid, Metric::Is];
                if classes.is_some() {
                    m.push(Metric::Cls);
                }
                m
            }
        };
        if metrics.contains(&Metric::Cls) && classes.is_none() {
            return Err(bad(
                "metrics: cls (class accuracy) needs a class-conditional model".into(),
            ));
        }
        let needs_features = metrics
            .iter()
            .any(|m| matches!(m, Metric::Fid | Metric::Kid | Metric::Pr));
        let needs_classifier = metrics.contains(&Metric::Cls) || metrics.contains(&Metric::Is);
        let eval_err = |e: diffuse_eval::Error| bad(e.to_string());
        let classifier = if needs_classifier || section.features == FeatureKind::Mnist {
            Some(MnistClassifier::embedded(device).map_err(eval_err)?)
        } else {
            None
        };
        let features = if !needs_features {
            None
        } else {
            Some(match section.features {
                FeatureKind::Mnist => {
                    FeatureNet::Mnist(MnistClassifier::embedded(device).map_err(eval_err)?)
                }
                FeatureKind::Inception => FeatureNet::Inception {
                    net: InceptionV3::load_cached(device).map_err(eval_err)?,
                    resize: ResizeMode::Bilinear,
                },
            })
        };
        let real = match &features {
            None => Features::zeros(0, 0),
            Some(net) => {
                let name = section.real.as_deref().or(default_real).ok_or_else(|| {
                    bad("real: name the real images (a data set or a folder); a latent cache does not say which".into())
                })?;
                // Vector data (OpenMoji) rasterised at the size it is compared at.
                let opts = datasets::OpenOptions {
                    size: Some(size),
                    ..Default::default()
                };
                let ds = datasets::open_with(name, Split::Train, &opts)
                    .map_err(|e| bad(format!("real: {e}")))?;
                let images =
                    DatasetImages::new(ds, Some(section.num_real), Some(size)).map_err(eval_err)?;
                let bs = net.default_batch_size();
                net.extract(&images, bs, device, &mut |_, _| {})
                    .map_err(eval_err)?
                    .features
            }
        };
        let sampler_cfg = crate::trainer::preview_scheduler(sched_cfg, section.sampler.as_deref())?;
        let sampler = Sampler::new(&sampler_cfg, section.steps)?;
        Ok(EvalHook {
            section: section.clone(),
            metrics,
            features,
            classifier,
            real,
            sampler,
            guidance: if classes.is_some() {
                section.guidance_scale.unwrap_or(default_guidance)
            } else {
                1.0
            },
        })
    }

    pub(crate) fn due(&self, step: u64, last: bool) -> bool {
        self.section.every > 0 && (step.is_multiple_of(self.section.every) || last)
    }

    /// Samples with `model` (EMA weights; latents decoded by `vae`) and measures them:
    /// `eval/<metric>` values plus `eval/sample_s`.
    pub(crate) fn run(
        &self,
        model: &Network,
        vae: Option<&AutoencoderKL>,
        classes: Option<usize>,
        size: (usize, usize),
        device: &Device,
    ) -> Result<Vec<(String, f64)>> {
        let n = self.section.num_samples;
        let labels: Option<Vec<u32>> = classes.map(|k| (0..n).map(|i| (i % k) as u32).collect());
        let opts = GenerateOptions {
            num_images: n,
            batch_size: 64,
            seed: self.section.seed,
            size,
            class_labels: labels.clone(),
            class_weights: None,
            guidance_interval: None,
            guidance_scale: self.guidance,
            null_class: None,
            prompt_embeds: None,
            initial_noise: None,
            edit: None,
        };
        let started = std::time::Instant::now();
        let mut images = generate(model, &self.sampler, &opts, device, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })?;
        if let Some(v) = vae {
            images = decode_latents(v, &images, 16)?;
        }
        let sample_s = started.elapsed().as_secs_f64();
        let fake = MemoryImages {
            images: ImageBatch::from_unit_tensor(&images.to_device(&Device::Cpu)?)
                .map_err(|e| Error::Invalid(e.to_string()))?,
            labels: labels.clone(),
            name: format!("{n} samples"),
        };
        let report = evaluate(
            Reference::Features(&self.real),
            &fake,
            labels.as_deref(),
            self.features.as_ref(),
            self.classifier.as_ref(),
            &EvalOptions {
                metrics: self.metrics.clone(),
                ..Default::default()
            },
            device,
            &mut |_, _, _| {},
        )
        .map_err(|e| Error::Invalid(format!("[eval]: {e}")))?;
        let mut out: Vec<(String, f64)> = report
            .values()
            .into_iter()
            .map(|(k, v)| (format!("eval/{k}"), v))
            .collect();
        out.push(("eval/sample_s".into(), sample_s));
        Ok(out)
    }
}

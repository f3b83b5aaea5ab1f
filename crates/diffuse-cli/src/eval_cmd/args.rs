//! Arguments that `diffuse eval`'s subcommands share: the feature net, the data split, and
//! where real images come from.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use diffuse_data::datasets::{self, Split};
use diffuse_eval::classifier::MnistClassifier;
use diffuse_eval::features::FeatureNet;
use diffuse_eval::images::{DatasetImages, FolderImages, ImageSource, MemoryImages};
use diffuse_eval::inception::InceptionV3;
use diffuse_eval::resize::ResizeMode;
use std::path::Path;

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

//! Arguments that `diffuse eval`'s subcommands share: the feature net (and the classifier the
//! metrics need) and the data split.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use diffuse_data::datasets::Split;
use diffuse_eval::classifier::MnistClassifier;
use diffuse_eval::evaluate::Metric;
use diffuse_eval::features::FeatureNet;
use diffuse_eval::inception::InceptionV3;
use diffuse_eval::resize::ResizeMode;

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

/// The feature net that fid/kid/pr need and the classifier that cls/is need (none when the
/// feature net is the classifier).
pub(crate) fn feature_nets(
    metrics: &[Metric],
    a: &FeatureArgs,
    dev: &Device,
) -> Result<(Option<FeatureNet>, Option<MnistClassifier>)> {
    let needs_features = metrics
        .iter()
        .any(|m| matches!(m, Metric::Fid | Metric::Kid | Metric::Pr));
    let net = needs_features.then(|| feature_net(a, dev)).transpose()?;
    let classifier = if metrics
        .iter()
        .any(|m| matches!(m, Metric::Cls | Metric::Is))
        && !matches!(net, Some(FeatureNet::Mnist(_)))
    {
        Some(MnistClassifier::embedded(dev)?)
    } else {
        None
    };
    Ok((net, classifier))
}

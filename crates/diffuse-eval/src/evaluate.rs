//! One evaluation: the metrics asked for, of generated images against a reference (images or
//! a statistics file), as one report (what `diffuse eval` prints and the trainer logs).

use crate::classifier::MnistClassifier;
use crate::features::{Extracted, FeatureNet};
use crate::images::ImageSource;
use crate::metrics::{self, GaussianStats, KidOptions};
use crate::{Error, Result};
use candle_core::Device;
use nalgebra::DMatrix;
use serde::Serialize;
use std::borrow::Cow;

/// A metric `diffuse eval --metrics` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Fid,
    Kid,
    /// Precision and recall.
    Pr,
    /// Class accuracy of class-conditional samples (MNIST classifier).
    Cls,
    /// Inception-Score-style score from the MNIST classifier.
    Is,
}

impl Metric {
    pub const ALL: &'static str = "fid, kid, pr, cls, is";

    pub fn parse_list(s: &str) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let m = match part {
                "fid" => Metric::Fid,
                "kid" => Metric::Kid,
                "pr" => Metric::Pr,
                "cls" | "class_accuracy" => Metric::Cls,
                "is" => Metric::Is,
                other => {
                    return Err(Error::Input(format!(
                        "--metrics: unknown metric {other:?}; allowed: {}",
                        Self::ALL
                    )))
                }
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(Error::Input(format!(
                "--metrics: none given; allowed: {}",
                Self::ALL
            )));
        }
        Ok(out)
    }

    fn needs_features(self) -> bool {
        matches!(self, Metric::Fid | Metric::Kid | Metric::Pr)
    }
}

/// What generated images are compared with.
pub enum Reference<'a> {
    Images(&'a dyn ImageSource),
    /// Precomputed statistics (FID only).
    Stats(GaussianStats),
    /// Precomputed features of real images (by the same feature net), e.g. kept by the trainer
    /// across evaluations.
    Features(&'a crate::metrics::Features),
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub metrics: Vec<Metric>,
    pub batch_size: Option<usize>,
    pub kid: KidOptions,
    /// k of the k-NN manifolds.
    pub pr_k: usize,
    pub is_splits: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            metrics: vec![Metric::Fid],
            batch_size: None,
            kid: KidOptions::default(),
            pr_k: 3,
            is_splits: 10,
        }
    }
}

/// The numbers asked for (others absent).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid_std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_net: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_real: Option<usize>,
    pub num_fake: usize,
}

impl Report {
    /// (name, value) of every number present, in a fixed order.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        [
            ("fid", self.fid),
            ("kid_mean", self.kid_mean),
            ("kid_std", self.kid_std),
            ("precision", self.precision),
            ("recall", self.recall),
            ("class_accuracy", self.class_accuracy),
            ("is_mean", self.is_mean),
            ("is_std", self.is_std),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// Evaluates `fake` against `reference`. `features` is needed for fid/kid/pr, `classifier`
/// for cls/is (the same classifier serves both when `features` is it). `fake_labels` are the
/// classes asked for (else the source's own labels). `on_progress(stage, done, total)`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    reference: Reference<'_>,
    fake: &dyn ImageSource,
    fake_labels: Option<&[u32]>,
    features: Option<&FeatureNet>,
    classifier: Option<&MnistClassifier>,
    opts: &EvalOptions,
    device: &Device,
    on_progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Report> {
    let want = |m: Metric| opts.metrics.contains(&m);
    let mut report = Report {
        num_fake: fake.len(),
        ..Default::default()
    };
    let mut fake_ex: Option<Extracted> = None;
    if opts.metrics.iter().any(|m| m.needs_features()) {
        let net = features
            .ok_or_else(|| Error::Input("fid/kid/pr need a feature net (--features)".into()))?;
        if matches!(reference, Reference::Stats(_)) && (want(Metric::Kid) || want(Metric::Pr)) {
            return Err(Error::Input(
                "KID and precision/recall need real images, not a statistics file: give --real \
                 a folder or data set, or ask only for --metrics fid"
                    .into(),
            ));
        }
        let bs = opts.batch_size.unwrap_or(net.default_batch_size());
        let fx = net.extract(fake, bs, device, &mut |d, t| on_progress("generated", d, t))?;
        report.feature_net = Some(net.tag());
        let real_feats = match &reference {
            Reference::Stats(s) => {
                if s.dim() != net.dim() {
                    return Err(Error::Input(format!(
                        "the statistics have {} features, the feature net {}",
                        s.dim(),
                        net.dim()
                    )));
                }
                report.num_real = Some(s.count);
                None
            }
            Reference::Images(real) => {
                report.num_real = Some(real.len());
                Some(Cow::Owned(
                    net.extract(*real, bs, device, &mut |d, t| on_progress("real", d, t))?
                        .features,
                ))
            }
            Reference::Features(f) => {
                if f.ncols() != net.dim() {
                    return Err(Error::Input(format!(
                        "the real features have {} dimensions, the feature net {}",
                        f.ncols(),
                        net.dim()
                    )));
                }
                report.num_real = Some(f.nrows());
                Some(Cow::Borrowed(*f))
            }
        };
        if want(Metric::Fid) {
            let fs = GaussianStats::from_features(&fx.features)?;
            let rs = match (&reference, &real_feats) {
                (Reference::Stats(s), _) => s.clone(),
                (_, Some(r)) => GaussianStats::from_features(r)?,
                _ => unreachable!("real features exist when there are no stats"),
            };
            report.fid = Some(metrics::fid(&rs, &fs)?);
        }
        if let Some(r) = &real_feats {
            if want(Metric::Kid) {
                let (m, s) = metrics::kid(r, &fx.features, opts.kid)?;
                report.kid_mean = Some(m);
                report.kid_std = Some(s);
            }
            if want(Metric::Pr) {
                let (p, rc) = metrics::precision_recall(r, &fx.features, opts.pr_k)?;
                report.precision = Some(p);
                report.recall = Some(rc);
            }
        }
        fake_ex = Some(fx);
    }
    if want(Metric::Cls) || want(Metric::Is) {
        let (probs, preds) = match fake_ex {
            Some(Extracted {
                probs: Some(p),
                preds: Some(c),
                ..
            }) => (p, c),
            _ => {
                let c = classifier
                    .ok_or_else(|| Error::Input("cls/is need the MNIST classifier".into()))?;
                let (_, p, preds) =
                    crate::classifier::classify(c, fake, 500, device, &mut |d, t| {
                        on_progress("classifier", d, t)
                    })?;
                let n = p.len();
                let p = DMatrix::from_row_iterator(
                    n,
                    crate::classifier::NUM_CLASSES,
                    p.into_iter().flatten().map(f64::from),
                );
                (p, preds)
            }
        };
        if want(Metric::Cls) {
            let labels = match fake_labels {
                Some(l) => l.to_vec(),
                None => fake.labels().ok_or_else(|| {
                    Error::Input(
                        "class accuracy needs the classes asked for: evaluate a class-conditional \
                         --model, or put the images in DIR/<class>/ subfolders"
                            .into(),
                    )
                })?,
            };
            if labels.len() != preds.len() {
                return Err(Error::Input(format!(
                    "{} labels for {} images",
                    labels.len(),
                    preds.len()
                )));
            }
            let right = labels.iter().zip(&preds).filter(|(a, b)| a == b).count();
            report.class_accuracy = Some(right as f64 / preds.len() as f64);
        }
        if want(Metric::Is) {
            let splits = opts.is_splits.min(probs.nrows());
            let (m, s) = metrics::inception_score_shuffled(&probs, splits, 2020)?;
            report.is_mean = Some(m);
            report.is_std = Some(s);
        }
    }
    Ok(report)
}

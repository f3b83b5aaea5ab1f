//! A data set without some of its items: text-to-image training leaves the images of held-out
//! captions out, and its evaluation searches the rest for each sample's nearest image.

use super::{Caption, Dataset, Sample};
use crate::{Error, Result};
use std::sync::Arc;

/// A data set without some of its items (the held-out captions' images).
pub struct Subset {
    inner: Arc<dyn Dataset>,
    keep: Vec<usize>,
}

impl Subset {
    /// The items `keep` of `inner`, in that order.
    pub fn new(inner: Arc<dyn Dataset>, keep: Vec<usize>) -> Self {
        Subset { inner, keep }
    }

    /// The index in the whole set of item `i`.
    pub fn source_index(&self, i: usize) -> usize {
        self.keep[i]
    }

    /// `inner` without the items whose caption is one of `holdout`; an entry of `holdout` that
    /// names no caption is an error (a typo would silently hold out nothing).
    pub fn without_captions(inner: Arc<dyn Dataset>, holdout: &[String]) -> Result<Self> {
        let norm = |s: &str| s.trim().to_lowercase();
        let held: Vec<String> = holdout.iter().map(|h| norm(h)).collect();
        let mut found = vec![false; held.len()];
        let mut keep = Vec::with_capacity(inner.len());
        for i in 0..inner.len() {
            let c = inner.caption(i).ok_or_else(|| {
                Error::Invalid(format!(
                    "data set {}: item {i} has no caption; text-to-image needs a captioned set (openmoji)",
                    inner.describe()
                ))
            })?;
            match held.iter().position(|h| *h == norm(&c.text)) {
                Some(j) => found[j] = true,
                None => keep.push(i),
            }
        }
        if let Some(j) = found.iter().position(|f| !f) {
            return Err(Error::Invalid(format!(
                "captions.holdout: {:?} is no caption of the data set (give whole captions, e.g. {:?})",
                holdout[j],
                inner.caption(0).map(|c| c.text).unwrap_or_default()
            )));
        }
        if keep.is_empty() {
            return Err(Error::Invalid(
                "captions.holdout leaves no image to train on".into(),
            ));
        }
        Ok(Subset { inner, keep })
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.keep.len()
    }
    fn get(&self, i: usize) -> Result<Sample> {
        self.inner.get(self.keep[i])
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn describe(&self) -> String {
        format!(
            "{} of {} ({} held out)",
            self.keep.len(),
            self.inner.describe(),
            self.inner.len() - self.keep.len()
        )
    }
    fn attribution(&self) -> Option<&str> {
        self.inner.attribution()
    }
    fn caption(&self, i: usize) -> Option<Caption> {
        self.inner.caption(self.keep[i])
    }
}

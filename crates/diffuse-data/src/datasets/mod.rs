//! Data sets: where images come from, one sample at a time.
//!
//! IDX files (MNIST, Fashion-MNIST; raw or gzip), CIFAR-10 binary batches, and image folders
//! (class = subfolder name, or unconditional), OpenMoji, and pixel caches (`diffuse data
//! cache`). In-memory formats copy a sample out; folders decode the file when the sample is
//! asked for, on the loader's worker threads; a pixel cache reads one pre-resized row.

mod cifar;
mod folder;
mod idx;
pub mod openmoji;
pub mod pixel_cache;
mod subset;

pub use cifar::Cifar10;
pub use folder::{images_in, ImageFolder};
pub use idx::{read_idx, IdxDataset};
pub use openmoji::OpenMoji;
pub use pixel_cache::PixelCache;
pub use subset::Subset;

use crate::Result;
use std::path::PathBuf;

/// One decoded image: `pixels` in HWC order, u8.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub pixels: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub label: Option<u32>,
}

/// What a data set says about one image in words: a caption and keywords (for text-to-image
/// training, which builds its prompts from them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// The caption ("red apple").
    pub text: String,
    /// Keywords, most specific first as the data lists them ("fruit", "food").
    pub tags: Vec<String>,
}

/// A data set the loader can draw from (shared by its worker threads).
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Decodes sample `i`; an unreadable sample is an error naming its file.
    fn get(&self, i: usize) -> Result<Sample>;
    /// Number of classes, for labelled sets.
    fn num_classes(&self) -> Option<usize>;
    /// Class names, in label order.
    fn class_names(&self) -> Vec<String> {
        (0..self.num_classes().unwrap_or(0))
            .map(|c| c.to_string())
            .collect()
    }
    /// Image channels (1 gray, 3 colour, 4 colour with alpha).
    fn channels(&self) -> usize;
    /// A one-line description for logs.
    fn describe(&self) -> String;
    /// The credit the data's licence asks for, to print and to write into what is trained on it.
    fn attribution(&self) -> Option<&str> {
        None
    }
    /// Sample `i`'s caption, for captioned sets.
    fn caption(&self, _i: usize) -> Option<Caption> {
        None
    }
}

/// A data set diffuse knows by name.
#[derive(Debug, Clone)]
pub struct KnownDataset {
    pub name: &'static str,
    pub description: &'static str,
    /// Folders searched, in order.
    pub candidates: Vec<PathBuf>,
    /// The first candidate that holds the files, if any.
    pub found: Option<PathBuf>,
}

/// The project's root (where `data/` lives): `DIFFUSE_DATA_ROOT`, else the build's source tree.
fn bundled_root() -> PathBuf {
    let root = std::env::var_os("DIFFUSE_DATA_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data"));
    root.canonicalize().unwrap_or(root)
}

/// MNIST (bundled), Fashion-MNIST (Debian package), CIFAR-10 (user's folder, via
/// `DIFFUSE_CIFAR10`), with where each was looked for and found.
pub fn known_datasets() -> Vec<KnownDataset> {
    let idx_present = |d: &PathBuf| {
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
            .iter()
            .all(|f| d.join(f).exists() || d.join(format!("{f}.gz")).exists())
    };
    let cifar_present = |d: &PathBuf| d.join("data_batch_1.bin").exists();
    let mut out = Vec::new();
    let mnist = vec![bundled_root().join("mnist"), PathBuf::from("data/mnist")];
    out.push(KnownDataset {
        name: "mnist",
        description: "MNIST handwritten digits, 60k/10k, 28×28 gray, 10 classes (bundled)",
        found: mnist.iter().find(|d| idx_present(d)).cloned(),
        candidates: mnist,
    });
    let mut fashion = vec![
        bundled_root().join("fashion-mnist"),
        PathBuf::from("/usr/share/datasets/fashion-mnist"),
    ];
    if let Some(p) = std::env::var_os("DIFFUSE_FASHION_MNIST") {
        fashion.insert(0, PathBuf::from(p));
    }
    out.push(KnownDataset {
        name: "fashion-mnist",
        description:
            "Fashion-MNIST, 60k/10k, 28×28 gray, 10 classes (apt install dataset-fashion-mnist)",
        found: fashion.iter().find(|d| idx_present(d)).cloned(),
        candidates: fashion,
    });
    let mut cifar = vec![bundled_root().join("cifar-10-batches-bin")];
    if let Some(p) = std::env::var_os("DIFFUSE_CIFAR10") {
        cifar.insert(0, PathBuf::from(p));
    }
    let mut openmoji = vec![bundled_root().join("openmoji")];
    if let Some(p) = std::env::var_os("DIFFUSE_OPENMOJI") {
        openmoji.insert(0, PathBuf::from(p));
    }
    out.push(KnownDataset {
        name: "openmoji",
        description: "OpenMoji 17 colour emoji, 2,456 (no skin-tone variants), 11 classes (groups), rasterised at data.size; CC BY-SA 4.0 (diffuse data fetch openmoji)",
        found: openmoji.iter().find(|d| openmoji::is_openmoji(d)).cloned(),
        candidates: openmoji,
    });
    out.push(KnownDataset {
        name: "cifar10",
        description: "CIFAR-10 binary version, 50k/10k, 32×32 RGB, 10 classes (bring your own: DIFFUSE_CIFAR10=folder)",
        found: cifar.iter().find(|d| cifar_present(d)).cloned(),
        candidates: cifar,
    });
    out
}

/// Where `diffuse data fetch NAME` installs a data set by default: the project's `data/`
/// folder (`DIFFUSE_DATA_ROOT`), where [`known_datasets`] looks first.
pub fn fetch_dir(name: &str) -> PathBuf {
    bundled_root().join(match name {
        "cifar10" => "cifar-10-batches-bin",
        other => other,
    })
}

/// Which split of a named data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// How image files become samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Transparent pixels: composited onto this, or kept as a 4th channel.
    pub background: crate::image_io::Background,
    /// The size vector data (OpenMoji's SVGs) is rasterised at (default 72, its design grid).
    pub size: Option<usize>,
}

/// Opens a data set by name (`mnist`, `fashion-mnist`, `cifar10`, `openmoji`) or by path (an
/// IDX folder, a CIFAR-10 binary folder, a pixel cache, OpenMoji, or an image folder).
pub fn open(spec: &str, split: Split) -> Result<Box<dyn Dataset>> {
    open_with(spec, split, &OpenOptions::default())
}

/// [`open`] with the options for image files.
pub fn open_with(spec: &str, split: Split, opts: &OpenOptions) -> Result<Box<dyn Dataset>> {
    let known = known_datasets();
    let dir = match known.iter().find(|k| k.name == spec) {
        Some(k) => k.found.clone().ok_or_else(|| {
            crate::Error::Invalid(format!(
                "data set {spec} not found; looked in {}",
                k.candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        None => PathBuf::from(spec),
    };
    if !dir.is_dir() {
        return Err(crate::Error::Invalid(format!(
            "{}: no such data set folder (known names: mnist, fashion-mnist, cifar10, openmoji)",
            dir.display()
        )));
    }
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    if dir.join(format!("{prefix}-images-idx3-ubyte.gz")).exists()
        || dir.join(format!("{prefix}-images-idx3-ubyte")).exists()
    {
        return Ok(Box::new(IdxDataset::open_dir(&dir, prefix)?));
    }
    if dir.join("data_batch_1.bin").exists() || dir.join("test_batch.bin").exists() {
        return Ok(Box::new(Cifar10::open_dir(&dir, split)?));
    }
    if pixel_cache::is_pixel_cache(&dir) {
        return Ok(Box::new(PixelCache::open(&dir)?));
    }
    if openmoji::is_openmoji(&dir) {
        // One split: the set is small, and FID compares against all of it.
        let size = opts.size.unwrap_or(72);
        return Ok(Box::new(OpenMoji::open(&dir, size, opts.background)?));
    }
    Ok(Box::new(ImageFolder::open_with(&dir, opts.background)?))
}

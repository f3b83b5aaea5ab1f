//! A folder of images (PNG, JPEG, WebP): one subfolder per class (sorted names = labels 0..k),
//! or images directly in the folder (unconditional). Files are decoded when asked for, upright
//! by their EXIF orientation, alpha composited onto the background or kept.

use super::{Dataset, Sample};
use crate::image_io::{self, Background};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub struct ImageFolder {
    files: Vec<(PathBuf, Option<u32>)>,
    classes: Vec<String>,
    channels: usize,
    background: Background,
    root: PathBuf,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg" | "webp")
    )
}

/// Hidden entries (`.ipynb_checkpoints`, `._photo.jpg` from macOS, a cache) are no data.
fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The image files (PNG, JPEG, WebP) directly in `dir`, sorted, hidden ones skipped.
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p) && !is_hidden(p))
        .collect();
    v.sort();
    Ok(v)
}

impl ImageFolder {
    /// Opens `root` with transparent pixels on white.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, Background::default())
    }

    /// Opens `root`, compositing alpha onto `background` (or keeping it: 4 channels).
    pub fn open_with(root: &Path, background: Background) -> Result<Self> {
        let rd = std::fs::read_dir(root).map_err(|source| Error::Io {
            path: root.display().to_string(),
            source,
        })?;
        let mut subdirs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && !is_hidden(p))
            .collect();
        subdirs.sort();
        let mut files = Vec::new();
        let mut classes = Vec::new();
        for d in &subdirs {
            let imgs = images_in(d)?;
            if imgs.is_empty() {
                continue;
            }
            let label = classes.len() as u32;
            classes.push(
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            files.extend(imgs.into_iter().map(|p| (p, Some(label))));
        }
        if files.is_empty() {
            files = images_in(root)?.into_iter().map(|p| (p, None)).collect();
        }
        if files.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no PNG, JPEG or WebP images (in it or in class subfolders)",
                root.display()
            )));
        }
        // Channels from the first readable image: gray stays gray, anything else is RGB (RGBA
        // when alpha is kept).
        let channels = image_io::open(&files[0].0)
            .map(|i| image_io::channels_of(&i, background))
            .unwrap_or(if background == Background::Alpha {
                4
            } else {
                3
            });
        Ok(ImageFolder {
            files,
            classes,
            channels,
            background,
            root: root.to_path_buf(),
        })
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, i: usize) -> Result<Sample> {
        let (path, label) = &self.files[i];
        let img = image_io::open(path)?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let pixels = image_io::pixels(&img, self.channels, self.background);
        Ok(Sample {
            pixels,
            width: w,
            height: h,
            channels: self.channels,
            label: *label,
        })
    }

    fn num_classes(&self) -> Option<usize> {
        (!self.classes.is_empty()).then_some(self.classes.len())
    }

    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn describe(&self) -> String {
        format!(
            "{} images ({} channel{}), {} from {}",
            self.len(),
            self.channels,
            if self.channels == 1 { "" } else { "s" },
            if self.classes.is_empty() {
                "unconditional".to_string()
            } else {
                format!("{} classes", self.classes.len())
            },
            self.root.display()
        )
    }
}

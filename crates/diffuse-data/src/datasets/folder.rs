//! A folder of images (PNG, JPEG, WebP): one subfolder per class (sorted names = labels 0..k),
//! or images directly in the folder (unconditional). Files are decoded when asked for, upright
//! by their EXIF orientation, alpha composited onto the background or kept.
//!
//! Captions, for text-to-image training, as Hugging Face `datasets`' ImageFolder and diffusers'
//! `train_text_to_image.py` take them: `metadata.jsonl` in the folder, one
//! `{"file_name": "cat.png", "text": "a black cat", "tags": [...]}` per line (`file_name`
//! relative to the folder; `tags` a list or a comma-separated string, optional), or else a
//! `.txt` beside each image holding its caption.

use super::{Caption, Dataset, Sample};
use crate::image_io::{self, Background};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub struct ImageFolder {
    files: Vec<(PathBuf, Option<u32>)>,
    /// One per file when the folder has captions.
    captions: Option<Vec<Caption>>,
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
        let captions = read_captions(root, &files)?;
        Ok(ImageFolder {
            files,
            captions,
            classes,
            channels,
            background,
            root: root.to_path_buf(),
        })
    }
}

/// The file of folder captions.
const METADATA: &str = "metadata.jsonl";

/// The captions of `files`: from `metadata.jsonl` (every image must have a line), else from a
/// `.txt` beside each image (all or none), else none.
fn read_captions(root: &Path, files: &[(PathBuf, Option<u32>)]) -> Result<Option<Vec<Caption>>> {
    let meta = root.join(METADATA);
    if meta.is_file() {
        let text = std::fs::read_to_string(&meta).map_err(|source| Error::Io {
            path: meta.display().to_string(),
            source,
        })?;
        let bad = |line: usize, m: String| {
            Error::Invalid(format!("{}: line {line}: {m}", meta.display()))
        };
        let mut by_file = std::collections::HashMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
            let field = |k: &str| v.get(k).and_then(|x| x.as_str());
            let (Some(name), Some(caption)) = (field("file_name"), field("text")) else {
                return Err(bad(
                    i + 1,
                    "expected an object with string fields `file_name` and `text`".into(),
                ));
            };
            let tags = match v.get("tags") {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|t| t.as_str())
                    .map(str::to_string)
                    .collect(),
                Some(serde_json::Value::String(t)) => t
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
                _ => Vec::new(),
            };
            by_file.insert(
                root.join(name),
                Caption {
                    text: caption.trim().to_string(),
                    tags,
                },
            );
        }
        return files
            .iter()
            .map(|(p, _)| {
                by_file.remove(p).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: no line for {} (give every image a caption)",
                        meta.display(),
                        p.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some);
    }
    let sidecar = |p: &Path| p.with_extension("txt");
    let with_txt = files.iter().filter(|(p, _)| sidecar(p).is_file()).count();
    if with_txt == 0 {
        return Ok(None);
    }
    files
        .iter()
        .map(|(p, _)| {
            let t = sidecar(p);
            let text = std::fs::read_to_string(&t).map_err(|_| {
                Error::Invalid(format!(
                    "{}: {with_txt} of {} images have a caption .txt but {} has none",
                    root.display(),
                    files.len(),
                    p.display()
                ))
            })?;
            Ok(Caption {
                text: text.trim().to_string(),
                tags: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn caption(&self, i: usize) -> Option<Caption> {
        self.captions.as_ref().map(|c| c[i].clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path) {
        image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn captions_come_from_metadata_jsonl_or_txt_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        png(&root.join("a.png"));
        png(&root.join("b.png"));
        assert!(ImageFolder::open(root).unwrap().caption(0).is_none());
        // One .txt beside one image of two: named.
        std::fs::write(root.join("a.txt"), "a red square\n").unwrap();
        let e = ImageFolder::open(root).err().unwrap().to_string();
        assert!(e.contains("1 of 2 images") && e.contains("b.png"), "{e}");
        std::fs::write(root.join("b.txt"), " another one ").unwrap();
        let f = ImageFolder::open(root).unwrap();
        assert_eq!(f.caption(0).unwrap().text, "a red square");
        assert_eq!(f.caption(1).unwrap().text, "another one");
        // metadata.jsonl wins, tags as a list or a string.
        std::fs::write(
            root.join(METADATA),
            "{\"file_name\": \"b.png\", \"text\": \"blue\", \"tags\": \"x, y\"}\n\n\
             {\"file_name\": \"a.png\", \"text\": \"red\", \"tags\": [\"z\"]}\n",
        )
        .unwrap();
        let f = ImageFolder::open(root).unwrap();
        assert_eq!(
            f.caption(0).unwrap(),
            Caption {
                text: "red".into(),
                tags: vec!["z".into()]
            }
        );
        assert_eq!(f.caption(1).unwrap().tags, ["x", "y"]);
        std::fs::write(
            root.join(METADATA),
            "{\"file_name\": \"a.png\", \"text\": \"red\"}\n",
        )
        .unwrap();
        let e = ImageFolder::open(root).err().unwrap().to_string();
        assert!(e.contains("no line for") && e.contains("b.png"), "{e}");
        std::fs::write(root.join(METADATA), "{\"file_name\": \"a.png\"}\n").unwrap();
        let e = ImageFolder::open(root).err().unwrap().to_string();
        assert!(e.contains("line 1") && e.contains("`text`"), "{e}");
    }
}

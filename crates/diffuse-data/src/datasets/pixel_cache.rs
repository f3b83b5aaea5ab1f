//! A pre-resized pixel cache (`diffuse data cache`): every image of a data set decoded, made
//! upright, composited and brought to `size × size` once, and stored as raw u8 HWC rows in one
//! file. For data sets whose decoding costs more than a training step (folders of large
//! photos); a sample is then one positioned read. [`super::open`] knows the folder.
//!
//! Layout: `pixels-u8.bin` (count × size × size × channels bytes) and `pixel-cache.json`
//! ([`CacheIndex`]), written last, so a cache interrupted while it is written is never opened.

use super::{Dataset, Sample};
use crate::transform::{Fit, Transform};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The index file; its presence makes a folder a pixel cache.
pub const INDEX_NAME: &str = "pixel-cache.json";
const PIXELS_NAME: &str = "pixels-u8.bin";
const FORMAT: &str = "diffuse-pixel-cache-1";

/// `pixel-cache.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheIndex {
    pub format: String,
    pub count: usize,
    pub size: usize,
    pub channels: usize,
    /// How the images were brought to the size: pad, resize or center_crop.
    pub fit: String,
    /// Class names in label order (empty: unconditional).
    pub classes: Vec<String>,
    /// One label per cached image, for labelled sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<u32>>,
    /// The source data set's description.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
    /// Files that could not be decoded and were left out (`--skip-bad`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Whether `dir` holds a finished pixel cache.
pub fn is_pixel_cache(dir: &Path) -> bool {
    dir.join(INDEX_NAME).is_file()
}

/// Decodes every sample of `dataset` on `workers` threads, fits it to `size × size` and writes
/// the cache into `out`. `progress(done, total)` is called as chunks finish. An unreadable
/// sample stops the run, or is left out and listed with `skip_bad`.
pub fn write_cache(
    dataset: &dyn Dataset,
    size: usize,
    fit: Fit,
    workers: usize,
    skip_bad: bool,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CacheIndex> {
    if size == 0 {
        return Err(Error::Invalid("--size must be at least 1".into()));
    }
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    // A finished cache is replaced only once the new one is whole.
    let tmp = out.join(format!("{PIXELS_NAME}.partial"));
    let mut file = std::io::BufWriter::new(File::create(&tmp).map_err(Error::io(&tmp))?);
    let t = Transform {
        size,
        fit,
        hflip: false,
    };
    let c = dataset.channels();
    let labelled = dataset.num_classes().is_some();
    let (total, workers) = (dataset.len(), workers.max(1));
    let (mut count, mut labels, mut skipped) = (0usize, Vec::new(), Vec::new());
    const CHUNK: usize = 256;
    for start in (0..total).step_by(CHUNK) {
        let end = (start + CHUNK).min(total);
        // Worker w fits samples start + w, start + w + workers, …; written back in order.
        let parts: Vec<Vec<(usize, Result<Sample>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    s.spawn(move || {
                        (start + w..end)
                            .step_by(workers)
                            .map(|i| {
                                let r = dataset.get(i).and_then(|s| {
                                    if s.channels != c {
                                        return Err(Error::Invalid(format!(
                                            "sample {i} has {} channels, the data set {c}",
                                            s.channels
                                        )));
                                    }
                                    Ok(Sample {
                                        pixels: t.fit_u8(&s),
                                        width: size,
                                        height: size,
                                        ..s
                                    })
                                });
                                (i, r)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("cache worker"))
                .collect()
        });
        let mut done: Vec<(usize, Result<Sample>)> = parts.into_iter().flatten().collect();
        done.sort_by_key(|(i, _)| *i);
        for (_, r) in done {
            match r {
                Ok(s) => {
                    std::io::Write::write_all(&mut file, &s.pixels).map_err(Error::io(&tmp))?;
                    labels.push(s.label.unwrap_or(0));
                    count += 1;
                }
                Err(e) if skip_bad => skipped.push(e.to_string()),
                Err(e) => {
                    drop(file);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        progress(end, total);
    }
    let file = file
        .into_inner()
        .map_err(|e| Error::io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(Error::io(&tmp))?;
    drop(file);
    if count == 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Invalid(format!(
            "no image of {} could be decoded",
            dataset.describe()
        )));
    }
    let index = CacheIndex {
        format: FORMAT.into(),
        count,
        size,
        channels: c,
        fit: fit.name().into(),
        classes: if labelled {
            dataset.class_names()
        } else {
            Vec::new()
        },
        labels: labelled.then_some(labels),
        source: dataset.describe(),
        attribution: dataset.attribution().map(str::to_string),
        skipped,
    };
    // Old index out first: between the renames the folder is no cache at all, never a
    // mismatched one.
    let index_path = out.join(INDEX_NAME);
    if index_path.exists() {
        std::fs::remove_file(&index_path).map_err(Error::io(&index_path))?;
    }
    let pixels = out.join(PIXELS_NAME);
    std::fs::rename(&tmp, &pixels).map_err(Error::io(&pixels))?;
    let text = serde_json::to_string_pretty(&index).expect("json");
    crate::fs::write_atomic(&index_path, text.as_bytes())?;
    Ok(index)
}

/// A pixel cache opened as a data set: a sample is one positioned read of its row.
pub struct PixelCache {
    index: CacheIndex,
    file: File,
    dir: PathBuf,
}

impl PixelCache {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_NAME);
        let text = std::fs::read_to_string(&index_path).map_err(Error::io(&index_path))?;
        let index: CacheIndex = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a pixel cache index ({e}); rebuild it with `diffuse data cache`",
                index_path.display()
            ))
        })?;
        if index.format != FORMAT {
            return Err(Error::Invalid(format!(
                "{}: format {:?}, this diffuse reads {FORMAT:?}; rebuild it with `diffuse data cache`",
                index_path.display(),
                index.format
            )));
        }
        let pixels = dir.join(PIXELS_NAME);
        let file = File::open(&pixels).map_err(Error::io(&pixels))?;
        let want = (index.count * index.size * index.size * index.channels) as u64;
        let have = file.metadata().map_err(Error::io(&pixels))?.len();
        let labels_ok = index.labels.as_ref().is_none_or(|l| {
            l.len() == index.count && l.iter().all(|&l| (l as usize) < index.classes.len())
        });
        if have != want || !labels_ok || !(1..=4).contains(&index.channels) {
            return Err(Error::Invalid(format!(
                "{}: {have} bytes and {} labels for {} images of {}×{}×{}; the cache is damaged — rebuild it with `diffuse data cache`",
                pixels.display(),
                index.labels.as_ref().map_or(0, Vec::len),
                index.count,
                index.size,
                index.size,
                index.channels
            )));
        }
        Ok(PixelCache {
            index,
            file,
            dir: dir.to_path_buf(),
        })
    }

    pub fn index(&self) -> &CacheIndex {
        &self.index
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_at(f: &File, buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = std::os::windows::fs::FileExt::seek_read(f, &mut buf[done..], offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
        offset += n as u64;
    }
    Ok(())
}

impl Dataset for PixelCache {
    fn len(&self) -> usize {
        self.index.count
    }

    fn get(&self, i: usize) -> Result<Sample> {
        let (n, c) = (self.index.size, self.index.channels);
        let mut pixels = vec![0u8; n * n * c];
        read_at(&self.file, &mut pixels, (i * n * n * c) as u64)
            .map_err(Error::io(&self.dir.join(PIXELS_NAME)))?;
        Ok(Sample {
            pixels,
            width: n,
            height: n,
            channels: c,
            label: self.index.labels.as_ref().map(|l| l[i]),
        })
    }

    fn num_classes(&self) -> Option<usize> {
        self.index.labels.as_ref().map(|_| self.index.classes.len())
    }

    fn class_names(&self) -> Vec<String> {
        self.index.classes.clone()
    }

    fn channels(&self) -> usize {
        self.index.channels
    }

    fn describe(&self) -> String {
        format!(
            "{} images at {} px ({}), cached in {} from: {}",
            self.index.count,
            self.index.size,
            self.index.fit,
            self.dir.display(),
            self.index.source
        )
    }

    fn attribution(&self) -> Option<&str> {
        self.index.attribution.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::ImageFolder;

    fn folder(dir: &Path) {
        for (class, n) in [("cat", 3u8), ("dog", 2)] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for k in 0..n {
                let img = image::RgbImage::from_fn(40, 20, |x, y| {
                    image::Rgb([k * 50 + x as u8, y as u8 * 3, class.len() as u8])
                });
                img.save(dir.join(class).join(format!("{k}.jpg"))).unwrap();
            }
        }
    }

    #[test]
    fn the_cache_holds_what_the_transform_made_of_each_image_in_order_with_labels() {
        let src = tempfile::tempdir().unwrap();
        folder(src.path());
        let ds = ImageFolder::open(src.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut calls = Vec::new();
        let index = write_cache(
            &ds,
            16,
            Fit::CenterCrop,
            2,
            false,
            out.path(),
            &mut |d, t| calls.push((d, t)),
        )
        .unwrap();
        assert_eq!(calls.last(), Some(&(5, 5)));
        assert_eq!((index.count, index.size, index.channels), (5, 16, 3));
        assert_eq!(index.classes, vec!["cat", "dog"]);
        let cache = PixelCache::open(out.path()).unwrap();
        assert_eq!((cache.len(), cache.num_classes()), (5, Some(2)));
        let t = Transform {
            size: 16,
            fit: Fit::CenterCrop,
            hflip: false,
        };
        for i in 0..5 {
            let (a, b) = (cache.get(i).unwrap(), ds.get(i).unwrap());
            assert_eq!(a.label, b.label);
            assert_eq!(a.pixels, t.fit_u8(&b), "sample {i}");
            // Through the loader's transform the cached sample is the decoded one.
            assert_eq!(t.apply(&a, false), t.apply(&b, false));
        }
        assert!(
            crate::datasets::open(out.path().to_str().unwrap(), crate::datasets::Split::Train)
                .unwrap()
                .describe()
                .contains("cached in")
        );
    }

    #[test]
    fn a_bad_file_stops_the_cache_or_is_skipped_and_a_damaged_cache_says_rebuild() {
        let src = tempfile::tempdir().unwrap();
        folder(src.path());
        let bad = src.path().join("dog/1.jpg");
        let bytes = std::fs::read(&bad).unwrap();
        std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
        let ds = ImageFolder::open(src.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = write_cache(&ds, 8, Fit::Resize, 2, false, out.path(), &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("dog/1.jpg"), "{e}");
        assert!(!is_pixel_cache(out.path()));
        assert!(!out.path().join("pixels-u8.bin.partial").exists());
        let index = write_cache(&ds, 8, Fit::Resize, 2, true, out.path(), &mut |_, _| {}).unwrap();
        assert_eq!((index.count, index.skipped.len()), (4, 1));
        assert_eq!(index.labels, Some(vec![0, 0, 0, 1]));
        // A truncated pixel file is refused with the fix.
        let px = out.path().join(PIXELS_NAME);
        let len = std::fs::metadata(&px).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&px)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let e = PixelCache::open(out.path()).err().unwrap().to_string();
        assert!(e.contains("rebuild it with `diffuse data cache`"), "{e}");
    }
}

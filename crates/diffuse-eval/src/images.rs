//! Image sets to evaluate, as u8 `[n, c, h, w]` batches: a folder of PNG/JPEG files (flat, or
//! one subfolder per class), a data set (`diffuse_data::datasets`), or images in memory
//! (generated samples, quantized to u8 as saving them as PNG would).

use crate::{io_err, Error, Result};
use candle_core::{DType, Tensor};
use diffuse_data::datasets::{self, Dataset, Sample, Split};
use diffuse_data::transform::{Fit, Transform};
use std::path::{Path, PathBuf};

/// u8 images, `[n, c, h, w]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
}

impl ImageBatch {
    /// `[n, c, h, w]` f32 in [0, 255].
    pub fn to_tensor(&self, device: &candle_core::Device) -> Result<Tensor> {
        Ok(
            Tensor::from_slice(&self.data, (self.n, self.c, self.h, self.w), device)?
                .to_dtype(DType::F32)?,
        )
    }

    /// Images in [−1, 1] (diffusers' range) quantized to u8 as a PNG writer does.
    pub fn from_unit_tensor(t: &Tensor) -> Result<Self> {
        let (n, c, h, w) = t.dims4()?;
        let data = ((t.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
            .round()?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        Ok(ImageBatch { n, c, h, w, data })
    }

    fn from_samples(samples: &[Sample], c: usize, h: usize, w: usize) -> Self {
        let mut data = Vec::with_capacity(samples.len() * c * h * w);
        for s in samples {
            // HWC → CHW
            for ch in 0..c {
                data.extend((0..h * w).map(|p| s.pixels[p * c + ch]));
            }
        }
        ImageBatch {
            n: samples.len(),
            c,
            h,
            w,
            data,
        }
    }
}

/// A set of same-size images with optional class labels.
pub trait ImageSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// (channels, height, width) of every image.
    fn shape(&self) -> (usize, usize, usize);
    /// Images `start..start + n`.
    fn batch(&self, start: usize, n: usize) -> Result<ImageBatch>;
    /// Class label of every image, when known.
    fn labels(&self) -> Option<Vec<u32>>;
    fn describe(&self) -> String;
}

/// Images already in memory.
pub struct MemoryImages {
    pub images: ImageBatch,
    pub labels: Option<Vec<u32>>,
    pub name: String,
}

impl ImageSource for MemoryImages {
    fn len(&self) -> usize {
        self.images.n
    }
    fn shape(&self) -> (usize, usize, usize) {
        (self.images.c, self.images.h, self.images.w)
    }
    fn batch(&self, start: usize, n: usize) -> Result<ImageBatch> {
        let per = self.images.c * self.images.h * self.images.w;
        Ok(ImageBatch {
            n,
            data: self.images.data[start * per..(start + n) * per].to_vec(),
            ..self.images.clone_header()
        })
    }
    fn labels(&self) -> Option<Vec<u32>> {
        self.labels.clone()
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

impl ImageBatch {
    fn clone_header(&self) -> ImageBatch {
        ImageBatch {
            n: 0,
            c: self.c,
            h: self.h,
            w: self.w,
            data: Vec::new(),
        }
    }
}

/// A folder of images of one size: `DIR/*.png`, or `DIR/<class>/*.png` (a numeric folder
/// name is the label, else the sorted position). `grid.png`, which `diffuse sample` writes
/// next to its images, is skipped.
pub struct FolderImages {
    root: PathBuf,
    files: Vec<(PathBuf, Option<u32>)>,
    shape: (usize, usize, usize),
}

fn is_image(p: &Path) -> bool {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    p.is_file()
        && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
        && p.file_name().is_some_and(|n| n != "grid.png")
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

impl FolderImages {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Input(format!("{}: no such folder", root.display())));
        }
        let entries = sorted_entries(root)?;
        let mut files: Vec<(PathBuf, Option<u32>)> = entries
            .iter()
            .filter(|p| is_image(p))
            .map(|p| (p.clone(), None))
            .collect();
        if files.is_empty() {
            let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
            for (i, d) in subdirs.iter().enumerate() {
                let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
                let label = name.and_then(|n| n.parse().ok()).unwrap_or(i as u32);
                for f in sorted_entries(d)?.into_iter().filter(|p| is_image(p)) {
                    files.push((f, Some(label)));
                }
            }
        }
        let Some((first, _)) = files.first() else {
            return Err(Error::Input(format!(
                "{}: no images (.png, .jpg) in the folder or its class subfolders",
                root.display()
            )));
        };
        let dims = |p: &Path| {
            image::image_dimensions(p)
                .map_err(|e| Error::Input(format!("{}: cannot read the image: {e}", p.display())))
        };
        let (w0, h0) = dims(first)?;
        for (f, _) in &files[1..] {
            let (w, h) = dims(f)?;
            if (w, h) != (w0, h0) {
                return Err(Error::Input(format!(
                    "{}: images of mixed sizes: {} is {w0}×{h0} but {} is {w}×{h}; \
                     bring them to one size first",
                    root.display(),
                    first.display(),
                    f.display()
                )));
            }
        }
        let c = load_sample(first)?.channels;
        Ok(FolderImages {
            root: root.to_path_buf(),
            files,
            shape: (c, h0 as usize, w0 as usize),
        })
    }
}

fn load_sample(p: &Path) -> Result<Sample> {
    let img = image::open(p)
        .map_err(|e| Error::Input(format!("{}: cannot decode the image: {e}", p.display())))?;
    let gray = matches!(
        img.color(),
        image::ColorType::L8 | image::ColorType::La8 | image::ColorType::L16
    );
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (channels, pixels) = if gray {
        (1, img.to_luma8().into_raw())
    } else {
        (3, img.to_rgb8().into_raw())
    };
    Ok(Sample {
        pixels,
        width: w,
        height: h,
        channels,
        label: None,
    })
}

/// Gray ↔ RGB so every sample has `c` channels.
fn to_channels(mut s: Sample, c: usize) -> Sample {
    if s.channels == c {
        return s;
    }
    s.pixels = if c == 3 {
        s.pixels.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        // ITU-R 601 luma, as image's to_luma8.
        s.pixels
            .chunks_exact(3)
            .map(|p| {
                ((p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114 + 500) / 1000) as u8
            })
            .collect()
    };
    s.channels = c;
    s
}

impl ImageSource for FolderImages {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }
    fn batch(&self, start: usize, n: usize) -> Result<ImageBatch> {
        let (c, h, w) = self.shape;
        let samples = self.files[start..start + n]
            .iter()
            .map(|(p, _)| {
                let s = to_channels(load_sample(p)?, c);
                if (s.height, s.width) != (h, w) {
                    return Err(Error::Input(format!(
                        "{}: {}×{} differs from the folder's {w}×{h}",
                        p.display(),
                        s.width,
                        s.height
                    )));
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageBatch::from_samples(&samples, c, h, w))
    }
    fn labels(&self) -> Option<Vec<u32>> {
        self.files.iter().map(|(_, l)| *l).collect()
    }
    fn describe(&self) -> String {
        format!("{} ({} images)", self.root.display(), self.files.len())
    }
}

/// The first `limit` images of a data set, optionally fitted to `size`×`size` with the
/// training transform (`Fit::Resize`), so real data matches a model trained at that size.
pub struct DatasetImages {
    dataset: Box<dyn Dataset>,
    len: usize,
    size: Option<usize>,
    shape: (usize, usize, usize),
    name: String,
}

impl DatasetImages {
    pub fn new(
        dataset: Box<dyn Dataset>,
        limit: Option<usize>,
        size: Option<usize>,
    ) -> Result<Self> {
        let len = limit.unwrap_or(usize::MAX).min(dataset.len());
        if len == 0 {
            return Err(Error::Input(format!("{}: no images", dataset.describe())));
        }
        let first = dataset.get(0)?;
        let shape = match size {
            Some(s) => (first.channels, s, s),
            None => (first.channels, first.height, first.width),
        };
        let fitted = size
            .map(|s| format!(", fitted to {s}×{s}"))
            .unwrap_or_default();
        let name = format!("{}: first {len} images{fitted}", dataset.describe());
        Ok(DatasetImages {
            dataset,
            len,
            size,
            shape,
            name,
        })
    }
}

impl ImageSource for DatasetImages {
    fn len(&self) -> usize {
        self.len
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }
    fn batch(&self, start: usize, n: usize) -> Result<ImageBatch> {
        let (c, h, w) = self.shape;
        let samples = (start..start + n)
            .map(|i| {
                let s = self.dataset.get(i)?;
                let s = match self.size {
                    Some(size) if (s.height, s.width) != (size, size) => {
                        let t = Transform {
                            size,
                            fit: Fit::Resize,
                            hflip: false,
                        };
                        // [c, size, size] in [−1, 1] from u8: back to the exact u8 values.
                        let v = t.apply(&s, false);
                        let mut hwc = vec![0u8; v.len()];
                        for ch in 0..s.channels {
                            for p in 0..size * size {
                                hwc[p * s.channels + ch] =
                                    ((v[ch * size * size + p] + 1.0) * 127.5).round() as u8;
                            }
                        }
                        Sample {
                            pixels: hwc,
                            width: size,
                            height: size,
                            ..s
                        }
                    }
                    _ => s,
                };
                if (s.channels, s.height, s.width) != (c, h, w) {
                    return Err(Error::Input(format!(
                        "{}: image {i} is {}×{}×{}, the first is {c}×{h}×{w}",
                        self.name, s.channels, s.height, s.width
                    )));
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageBatch::from_samples(&samples, c, h, w))
    }
    fn labels(&self) -> Option<Vec<u32>> {
        self.dataset.num_classes()?;
        (0..self.len)
            .map(|i| self.dataset.get(i).ok().and_then(|s| s.label))
            .collect()
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Images named on a command line: a data set name (mnist, …), an IDX/CIFAR folder, or a
/// folder of images; the first `limit`, fitted to `size`×`size` (data sets always, folders
/// only when `size` is given).
pub fn open_images(
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
        && !path.join("data_batch_1.bin").exists()
        && !datasets::openmoji::is_openmoji(path);
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
        return Err(Error::Input(format!(
            "{spec}: no such folder or data set (known names: mnist, fashion-mnist, cifar10, openmoji)"
        )));
    }
    // Vector data (OpenMoji) is rasterised at the size it is compared at.
    let opts = datasets::OpenOptions {
        size,
        ..Default::default()
    };
    let ds = datasets::open_with(spec, split, &opts)?;
    Ok(Box::new(DatasetImages::new(ds, limit, size)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(p: &Path, w: u32, h: u32) {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 10 + y) as u8]))
            .save(p)
            .unwrap();
    }

    #[test]
    fn folder_errors_and_reading() {
        let dir = tempfile::tempdir().unwrap();
        let e = FolderImages::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("no images"), "{e}");
        save(&dir.path().join("a.png"), 4, 3);
        save(&dir.path().join("grid.png"), 9, 9); // skipped
        let f = FolderImages::open(dir.path()).unwrap();
        assert_eq!((f.len(), f.shape()), (1, (1, 3, 4)));
        let b = f.batch(0, 1).unwrap();
        assert_eq!(b.data[..5], [0, 10, 20, 30, 1]);
        save(&dir.path().join("b.png"), 5, 3);
        let e = FolderImages::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("mixed sizes") && e.contains("4×3") && e.contains("5×3"),
            "{e}"
        );
    }

    #[test]
    fn class_subfolders_give_labels() {
        let dir = tempfile::tempdir().unwrap();
        for c in ["3", "7"] {
            std::fs::create_dir(dir.path().join(c)).unwrap();
            save(&dir.path().join(c).join("x.png"), 2, 2);
        }
        let f = FolderImages::open(dir.path()).unwrap();
        assert_eq!(f.labels(), Some(vec![3, 7]));
    }

    #[test]
    fn unit_tensor_quantizes_like_png() {
        let t = Tensor::new(&[[[[-1f32, 0.0, 1.0, 2.0]]]], &candle_core::Device::Cpu).unwrap();
        let b = ImageBatch::from_unit_tensor(&t).unwrap();
        assert_eq!(b.data, vec![0, 128, 255, 255]);
    }
}

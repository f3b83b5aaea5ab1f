//! OpenMoji 17 (the npm package `openmoji`, graphics CC BY-SA 4.0): colour emoji SVGs on a
//! 72×72 grid, rasterised with resvg at the training size, one class per `group` of
//! `data/openmoji.csv`. Left out: the `component` group and skin-tone variants (2,030 of the
//! 2,418 people-body emoji), so no class is mostly one face in five shades. The raster is
//! cached beside the data (`cache/rgba-SIZEpx-N.bin`), so a second run starts at once.

use super::{Caption, Dataset, Sample};
use crate::image_io::{self, Background};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The attribution OpenMoji's licence asks for: printed when it is fetched, written into every
/// pipeline trained on it.
pub const ATTRIBUTION: &str = "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0";

/// The classes, in label order.
pub const GROUPS: [&str; 11] = [
    "smileys-emotion",
    "people-body",
    "animals-nature",
    "food-drink",
    "travel-places",
    "activities",
    "objects",
    "symbols",
    "flags",
    "extras-openmoji",
    "extras-unicode",
];

pub struct OpenMoji {
    /// Straight (not premultiplied) RGBA, `size × size` per emoji.
    rgba: Vec<u8>,
    size: usize,
    labels: Vec<u32>,
    hexcodes: Vec<String>,
    /// `annotation` and `tags` of each emoji.
    captions: Vec<Caption>,
    background: Background,
    dir: PathBuf,
}

/// Whether `dir` holds OpenMoji as `diffuse data fetch openmoji` leaves it.
pub fn is_openmoji(dir: &Path) -> bool {
    dir.join("data/openmoji.csv").is_file() && dir.join("color/svg").is_dir()
}

/// An SVG rasterised to `size × size` straight RGBA (the viewBox scaled to fit).
pub fn rasterize(svg: &[u8], size: usize, name: &str) -> Result<Vec<u8>> {
    let bad = |m: String| Error::Decode {
        path: name.to_string(),
        message: m,
    };
    let tree = resvg::usvg::Tree::from_data(svg, &resvg::usvg::Options::default())
        .map_err(|e| bad(e.to_string()))?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size as u32, size as u32)
        .ok_or_else(|| bad(format!("cannot make a {size}×{size} raster")))?;
    let s = tree.size();
    let scale = (size as f32 / s.width()).min(size as f32 / s.height());
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    Ok(pixmap
        .pixels()
        .iter()
        .flat_map(|p| {
            let c = p.demultiply();
            [c.red(), c.green(), c.blue(), c.alpha()]
        })
        .collect())
}

impl OpenMoji {
    /// Opens the set in `dir` rendered at `size` px (from the cache when it is there).
    pub fn open(dir: &Path, size: usize, background: Background) -> Result<Self> {
        if !(1..=1024).contains(&size) {
            return Err(Error::Invalid(format!(
                "openmoji: size {size} is not in 1..=1024"
            )));
        }
        let csv_path = dir.join("data/openmoji.csv");
        let mut reader = csv::Reader::from_path(&csv_path)
            .map_err(|e| Error::Invalid(format!("{}: {e}", csv_path.display())))?;
        let headers = reader
            .headers()
            .map_err(|e| Error::Invalid(format!("{}: {e}", csv_path.display())))?
            .clone();
        let col = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                Error::Invalid(format!("{}: no `{name}` column", csv_path.display()))
            })
        };
        let (hex_c, group_c, skin_c) = (col("hexcode")?, col("group")?, col("skintone")?);
        let (annotation_c, tags_c) = (col("annotation")?, col("tags")?);
        let mut hexcodes = Vec::new();
        let mut labels = Vec::new();
        let mut captions = Vec::new();
        for (i, row) in reader.records().enumerate() {
            let row = row.map_err(|e| {
                Error::Invalid(format!("{}: row {}: {e}", csv_path.display(), i + 2))
            })?;
            let (hex, group) = (&row[hex_c], &row[group_c]);
            if !row[skin_c].is_empty() {
                continue;
            }
            if let Some(label) = GROUPS.iter().position(|g| *g == group) {
                hexcodes.push(hex.to_string());
                labels.push(label as u32);
                captions.push(Caption {
                    text: row[annotation_c].trim().to_string(),
                    tags: row[tags_c]
                        .split(',')
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect(),
                });
            }
        }
        if hexcodes.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no emoji of the groups {}",
                csv_path.display(),
                GROUPS.join(", ")
            )));
        }
        let per = size * size * 4;
        let cache = dir
            .join("cache")
            .join(format!("rgba-{size}px-{}.bin", hexcodes.len()));
        let rgba = match std::fs::read(&cache) {
            Ok(b) if b.len() == per * hexcodes.len() => b,
            _ => {
                let rgba = render_all(dir, &hexcodes, size)?;
                // A cache that cannot be written (a read-only data folder) only costs time.
                if std::fs::create_dir_all(cache.parent().expect("cache/")).is_ok() {
                    let _ = crate::fs::write_atomic(&cache, &rgba);
                }
                rgba
            }
        };
        Ok(OpenMoji {
            rgba,
            size,
            labels,
            hexcodes,
            captions,
            background,
            dir: dir.to_path_buf(),
        })
    }

    /// The emoji's hexcode (its file name in `color/svg/`).
    pub fn hexcode(&self, i: usize) -> &str {
        &self.hexcodes[i]
    }
}

/// Rasterises every emoji, on all cores.
fn render_all(dir: &Path, hexcodes: &[String], size: usize) -> Result<Vec<u8>> {
    let per = size * size * 4;
    let mut out = vec![0u8; per * hexcodes.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = hexcodes.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let jobs: Vec<_> = out
            .chunks_mut(per * chunk)
            .zip(hexcodes.chunks(chunk))
            .map(|(dst, hexes)| {
                scope.spawn(move || -> Result<()> {
                    for (d, hex) in dst.chunks_mut(per).zip(hexes) {
                        let p = dir.join("color/svg").join(format!("{hex}.svg"));
                        let svg = std::fs::read(&p).map_err(|source| Error::Io {
                            path: p.display().to_string(),
                            source,
                        })?;
                        d.copy_from_slice(&rasterize(&svg, size, &p.display().to_string())?);
                    }
                    Ok(())
                })
            })
            .collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().expect("a rasterising thread panicked"))
    })?;
    Ok(out)
}

impl Dataset for OpenMoji {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, i: usize) -> Result<Sample> {
        let per = self.size * self.size * 4;
        let rgba = image::RgbaImage::from_raw(
            self.size as u32,
            self.size as u32,
            self.rgba[i * per..(i + 1) * per].to_vec(),
        )
        .expect("sized");
        let channels = self.channels();
        Ok(Sample {
            pixels: image_io::pixels(
                &image::DynamicImage::ImageRgba8(rgba),
                channels,
                self.background,
            ),
            width: self.size,
            height: self.size,
            channels,
            label: Some(self.labels[i]),
        })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(GROUPS.len())
    }

    fn class_names(&self) -> Vec<String> {
        GROUPS.iter().map(|g| g.to_string()).collect()
    }

    fn channels(&self) -> usize {
        match self.background {
            Background::Alpha => 4,
            Background::Color(_) => 3,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} OpenMoji emoji ({} px, {} channels), {} classes (groups) from {}; {ATTRIBUTION}",
            self.len(),
            self.size,
            self.channels(),
            GROUPS.len(),
            self.dir.display()
        )
    }

    fn attribution(&self) -> Option<&str> {
        Some(ATTRIBUTION)
    }

    fn caption(&self, i: usize) -> Option<Caption> {
        self.captions.get(i).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRADIENT: &str = r##"<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">
  <defs><linearGradient id="g" x1="0" x2="1" y1="0" y2="0">
    <stop offset="0" stop-color="#ff0000"/><stop offset="1" stop-color="#0000ff"/>
  </linearGradient></defs>
  <rect x="0" y="0" width="72" height="36" fill="url(#g)"/>
</svg>"##;

    #[test]
    fn an_svg_with_a_gradient_rasterises_at_the_asked_size() {
        let px = rasterize(GRADIENT.as_bytes(), 16, "g.svg").unwrap();
        assert_eq!(px.len(), 16 * 16 * 4);
        let at = |x: usize, y: usize| &px[(y * 16 + x) * 4..(y * 16 + x) * 4 + 4];
        let (left, right, below) = (at(0, 2), at(15, 2), at(8, 12));
        assert!(left[0] > 200 && left[2] < 60 && left[3] == 255, "{left:?}");
        assert!(right[2] > 200 && right[0] < 60, "{right:?}");
        assert_eq!(below[3], 0, "transparent below the rect");
        let e = rasterize(b"<svg", 16, "bad.svg").unwrap_err().to_string();
        assert!(e.contains("bad.svg"), "{e}");
    }

    #[test]
    fn groups_are_classes_skin_tones_and_components_are_left_out_and_the_raster_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("color/svg")).unwrap();
        std::fs::write(
            dir.path().join("data/openmoji.csv"),
            "emoji,hexcode,group,subgroups,annotation,tags,skintone\n\
             a,1F600,smileys-emotion,face,\"grinning, face\",x,\n\
             b,1F44B-1F3FB,people-body,hand,wave,x,1\n\
             c,1F3FB,component,skin,light,x,\n\
             d,1F34E,food-drink,fruit,red apple,\"fruit, food\",\n",
        )
        .unwrap();
        for hex in ["1F600", "1F44B-1F3FB", "1F3FB", "1F34E"] {
            std::fs::write(dir.path().join(format!("color/svg/{hex}.svg")), GRADIENT).unwrap();
        }
        assert!(is_openmoji(dir.path()));
        let ds = OpenMoji::open(dir.path(), 8, Background::default()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!((ds.hexcode(0), ds.hexcode(1)), ("1F600", "1F34E"));
        let s = ds.get(1).unwrap();
        assert_eq!((s.label, s.channels, s.width), (Some(3), 3, 8));
        let c = ds.caption(1).unwrap();
        assert_eq!(c.text, "red apple");
        assert_eq!(c.tags, ["fruit", "food"]);
        assert_eq!(ds.caption(0).unwrap().text, "grinning, face");
        // Transparent bottom half on white.
        assert_eq!(&s.pixels[(7 * 8) * 3..(7 * 8) * 3 + 3], &[255, 255, 255]);
        assert!(dir.path().join("cache/rgba-8px-2.bin").exists());
        // From the cache: the SVGs are not read again.
        std::fs::remove_dir_all(dir.path().join("color/svg")).unwrap();
        std::fs::create_dir_all(dir.path().join("color/svg")).unwrap();
        let again = OpenMoji::open(dir.path(), 8, Background::Alpha).unwrap();
        assert_eq!(again.get(1).unwrap().channels, 4);
        assert_eq!(again.attribution(), Some(ATTRIBUTION));
    }
}

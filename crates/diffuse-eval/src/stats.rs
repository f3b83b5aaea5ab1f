//! Statistics files: `.npz` with `mu` `[d]` and `sigma` `[d, d]` in f64, the keys pytorch-fid's
//! `--save-stats` writes and `np.load(...)['mu']` reads, plus `feature_net` (the net's name as
//! UTF-8 bytes) and `count`, so a file from another feature net is refused. pytorch-fid's own
//! files (no `feature_net`, d = 2048, often `savez_compressed`) are read as Inception pool3.

use crate::metrics::GaussianStats;
use crate::{io_err, Error, Result};
use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

/// A statistics file's content.
#[derive(Debug, Clone)]
pub struct StatsFile {
    pub stats: GaussianStats,
    /// The feature net that made it; `None` for files without the key (pytorch-fid's).
    pub feature_net: Option<String>,
}

/// Writes `mu`, `sigma`, `feature_net` and `count` as an uncompressed `.npz` (atomically).
pub fn save(path: &Path, stats: &GaussianStats, feature_net: &str) -> Result<()> {
    let d = stats.dim();
    let dev = Device::Cpu;
    let mu = Tensor::from_slice(stats.mu.as_slice(), d, &dev)?;
    // nalgebra is column-major; the symmetric Σ is the same either way, but be exact.
    let sigma = Tensor::from_slice(stats.sigma.transpose().as_slice(), (d, d), &dev)?;
    let net = Tensor::from_slice(feature_net.as_bytes(), feature_net.len(), &dev)?;
    let count = Tensor::from_slice(&[stats.count as i64], 1, &dev)?;
    let tmp = path.with_extension("npz.partial");
    Tensor::write_npz(
        &[
            ("mu", &mu),
            ("sigma", &sigma),
            ("feature_net", &net),
            ("count", &count),
        ],
        &tmp,
    )
    .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    let bytes = std::fs::read(&tmp).map_err(io_err(&tmp))?;
    let _ = std::fs::remove_file(&tmp);
    diffuse_data::fs::write_atomic(path, &bytes)?;
    Ok(())
}

/// One array of an `.npy`: shape and values (numbers as f64, or raw bytes for u1).
struct Npy {
    shape: Vec<usize>,
    values: Vec<f64>,
    bytes: Vec<u8>,
}

fn parse_npy(name: &str, raw: &[u8]) -> std::result::Result<Npy, String> {
    if raw.len() < 10 || &raw[..6] != b"\x93NUMPY" {
        return Err(format!("{name}: not an .npy array"));
    }
    let (hlen, start) = match raw[6] {
        1 => (u16::from_le_bytes([raw[8], raw[9]]) as usize, 10),
        2 | 3 if raw.len() >= 12 => (
            u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize,
            12,
        ),
        v => return Err(format!("{name}: .npy version {v} not supported")),
    };
    let header = std::str::from_utf8(raw.get(start..start + hlen).ok_or("short header")?)
        .map_err(|_| format!("{name}: bad header"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        Some(header[i + key.len() + 2..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or(format!("{name}: no descr"))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(format!("{name}: Fortran-order arrays are not supported"));
    }
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or(format!("{name}: no shape"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{name}: bad shape {shape_txt}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let data = &raw[start + hlen..];
    let take = |size: usize| -> std::result::Result<&[u8], String> {
        data.get(..n * size).ok_or(format!(
            "{name}: {} bytes of data, expected {}",
            data.len(),
            n * size
        ))
    };
    let (values, bytes) = match descr {
        "<f8" => (
            take(8)?
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            vec![],
        ),
        "<f4" => (
            take(4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect(),
            vec![],
        ),
        "<i8" => (
            take(8)?
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect(),
            vec![],
        ),
        "|u1" | "<u1" => (vec![], take(1)?.to_vec()),
        other => return Err(format!("{name}: dtype {other} not supported")),
    };
    Ok(Npy {
        shape,
        values,
        bytes,
    })
}

fn read_npz(path: &Path) -> Result<HashMap<String, Npy>> {
    let shown = path.display().to_string();
    let bad = |m: String| Error::File(format!("{shown}: {m}"));
    let raw = std::fs::read(path).map_err(io_err(path))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(raw))
        .map_err(|e| bad(format!("not an .npz statistics file ({e})")))?;
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| bad(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| bad(e.to_string()))?
            .trim_end_matches(".npy")
            .to_string();
        let mut bytes = Vec::new();
        match entry.compression() {
            m if m == zip::CompressionMethod::STORE => {
                let mut e = entry;
                e.read_to_end(&mut bytes).map_err(io_err(path))?;
            }
            m if m == zip::CompressionMethod::DEFLATE => {
                flate2::read::DeflateDecoder::new(entry)
                    .read_to_end(&mut bytes)
                    .map_err(io_err(path))?;
            }
            m => return Err(bad(format!("{name}: compression {m:?} not supported"))),
        }
        out.insert(name.clone(), parse_npy(&name, &bytes).map_err(bad)?);
    }
    Ok(out)
}

/// Reads a statistics file.
pub fn load(path: &Path) -> Result<StatsFile> {
    let shown = path.display().to_string();
    let bad = |m: String| Error::File(format!("{shown}: {m}"));
    let mut arrays = read_npz(path)?;
    let mu = arrays
        .remove("mu")
        .ok_or_else(|| bad("no array `mu`: not a statistics file".into()))?;
    let sigma = arrays
        .remove("sigma")
        .ok_or_else(|| bad("no array `sigma`: not a statistics file".into()))?;
    let d = mu.values.len();
    if mu.shape != [d] || sigma.shape != [d, d] {
        return Err(bad(format!(
            "`mu` has shape {:?} and `sigma` {:?}; expected [d] and [d, d]",
            mu.shape, sigma.shape
        )));
    }
    let feature_net = match arrays.remove("feature_net") {
        Some(a) => {
            Some(String::from_utf8(a.bytes).map_err(|_| bad("`feature_net` is not UTF-8".into()))?)
        }
        None => None,
    };
    let count = arrays
        .remove("count")
        .and_then(|a| a.values.first().copied())
        .unwrap_or(0.0) as usize;
    Ok(StatsFile {
        stats: GaussianStats {
            mu: DVector::from_vec(mu.values),
            sigma: DMatrix::from_row_slice(d, d, &sigma.values),
            count,
        },
        feature_net,
    })
}

/// Reads a statistics file and checks that `feature_net` made it.
pub fn load_for(path: &Path, feature_net: &str, dim: usize) -> Result<GaussianStats> {
    let f = load(path)?;
    let made_by = match &f.feature_net {
        Some(n) => n.clone(),
        // pytorch-fid / clean-fid files carry no name: 2048-d means Inception pool3.
        None if f.stats.dim() == 2048 && feature_net.starts_with(crate::inception::FEATURE_NET) => {
            feature_net.to_string()
        }
        None => format!("an unknown {}-d feature net", f.stats.dim()),
    };
    if made_by != feature_net || f.stats.dim() != dim {
        return Err(Error::File(format!(
            "{}: statistics of {made_by} ({} features), but this evaluation uses {feature_net} \
             ({dim}); recompute them with `diffuse eval stats` and the same --features",
            path.display(),
            f.stats.dim()
        )));
    }
    Ok(f.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_net_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let f = DMatrix::from_fn(20, 3, |i, j| {
            ((i * 7 + j * 3) % 11) as f64 + 0.25 * j as f64
        });
        let s = GaussianStats::from_features(&f).unwrap();
        save(&p, &s, "net-a").unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back.stats, s);
        assert_eq!(back.feature_net.as_deref(), Some("net-a"));
        assert_eq!(load_for(&p, "net-a", 3).unwrap(), s);
        let e = load_for(&p, "net-b", 3).unwrap_err().to_string();
        assert!(
            e.contains("statistics of net-a") && e.contains("net-b"),
            "{e}"
        );
        std::fs::write(&p, b"junk").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("not an .npz statistics file"), "{e}");
    }
}

//! IDX files (LeCun's MNIST format; also Fashion-MNIST), raw or gzip: a big-endian header —
//! magic (0, 0, type 0x08 = u8, rank), one u32 per dimension — then the bytes.

use super::{Dataset, Sample};
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Reads an IDX file (gzip detected by its magic bytes): (dims, data).
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Invalid(format!(
                    "{}: corrupt gzip after {} decompressed bytes: {e}",
                    path.display(),
                    out.len()
                ))
            })?;
        out
    } else {
        raw
    };
    let bad = |offset: usize, msg: String| {
        Error::Invalid(format!(
            "{}: {msg} (at byte offset {offset})",
            path.display()
        ))
    };
    if bytes.len() < 4 {
        return Err(bad(0, "truncated: no IDX header".into()));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(
            0,
            format!(
                "not an unsigned-byte IDX file (magic {:02x} {:02x} {:02x} {:02x})",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(bad(4, format!("truncated header for rank {rank}")));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let have = bytes.len() - header;
    if have < expected {
        // Report the first incomplete item.
        let item: usize = dims[1..].iter().product::<usize>().max(1);
        return Err(bad(
            header + have / item * item,
            format!(
                "truncated: {have} data bytes for dims {dims:?} ({expected} expected); item {} is incomplete",
                have / item
            ),
        ));
    }
    let mut data = bytes;
    data.drain(..header);
    data.truncate(expected);
    Ok((dims, data))
}

/// An IDX image file with its label file: MNIST-style `{prefix}-images-idx3-ubyte[.gz]`.
pub struct IdxDataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    height: usize,
    width: usize,
    source: PathBuf,
}

impl IdxDataset {
    /// `prefix`: `train` or `t10k`.
    pub fn open_dir(dir: &Path, prefix: &str) -> Result<Self> {
        let find = |stem: &str| {
            let gz = dir.join(format!("{stem}.gz"));
            if gz.exists() {
                gz
            } else {
                dir.join(stem)
            }
        };
        Self::open(
            &find(&format!("{prefix}-images-idx3-ubyte")),
            &find(&format!("{prefix}-labels-idx1-ubyte")),
        )
    }

    pub fn open(images: &Path, labels: &Path) -> Result<Self> {
        let (idims, idata) = read_idx(images)?;
        let (ldims, ldata) = read_idx(labels)?;
        if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
            return Err(Error::Invalid(format!(
                "{} {:?} and {} {:?} do not pair up as images [n, h, w] and labels [n]",
                images.display(),
                idims,
                labels.display(),
                ldims
            )));
        }
        if let Some((i, l)) = ldata.iter().enumerate().find(|(_, &l)| l > 9) {
            return Err(Error::Invalid(format!(
                "{}: label {l} of item {i} is not a digit class (at byte offset {})",
                labels.display(),
                8 + i
            )));
        }
        Ok(IdxDataset {
            images: idata,
            labels: ldata,
            height: idims[1],
            width: idims[2],
            source: images.to_path_buf(),
        })
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, i: usize) -> Result<Sample> {
        let n = self.height * self.width;
        Ok(Sample {
            pixels: self.images[i * n..(i + 1) * n].to_vec(),
            width: self.width,
            height: self.height,
            channels: 1,
            label: Some(self.labels[i] as u32),
        })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(10)
    }

    fn channels(&self) -> usize {
        1
    }

    fn describe(&self) -> String {
        format!(
            "{} images {}×{} gray, 10 classes, from {}",
            self.len(),
            self.height,
            self.width,
            self.source.display()
        )
    }
}

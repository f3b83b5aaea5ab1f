//! CIFAR-10 binary version (`data_batch_{1..5}.bin`, `test_batch.bin`): records of one label
//! byte then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32×32).

use super::{Dataset, Sample, Split};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

const RECORD: usize = 1 + 3 * 32 * 32;
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub struct Cifar10 {
    records: Vec<u8>,
    dir: PathBuf,
}

impl Cifar10 {
    pub fn open_dir(dir: &Path, split: Split) -> Result<Self> {
        let files: Vec<PathBuf> = match split {
            Split::Train => (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}.bin")))
                .collect(),
            Split::Test => vec![dir.join("test_batch.bin")],
        };
        let mut records = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|source| Error::Io {
                path: f.display().to_string(),
                source,
            })?;
            if bytes.len() % RECORD != 0 {
                let whole = bytes.len() / RECORD;
                return Err(Error::Invalid(format!(
                    "{}: truncated: {} bytes is not a whole number of {RECORD}-byte records; record {whole} is incomplete (at byte offset {})",
                    f.display(),
                    bytes.len(),
                    whole * RECORD
                )));
            }
            for (i, rec) in bytes.chunks(RECORD).enumerate() {
                if rec[0] > 9 {
                    return Err(Error::Invalid(format!(
                        "{}: record {i} has label {} (at byte offset {})",
                        f.display(),
                        rec[0],
                        i * RECORD
                    )));
                }
            }
            records.extend(bytes);
        }
        Ok(Cifar10 {
            records,
            dir: dir.to_path_buf(),
        })
    }
}

impl Dataset for Cifar10 {
    fn len(&self) -> usize {
        self.records.len() / RECORD
    }

    fn get(&self, i: usize) -> Result<Sample> {
        let rec = &self.records[i * RECORD..(i + 1) * RECORD];
        // planar RGB → HWC
        let mut pixels = vec![0u8; 3 * 1024];
        for p in 0..1024 {
            for c in 0..3 {
                pixels[p * 3 + c] = rec[1 + c * 1024 + p];
            }
        }
        Ok(Sample {
            pixels,
            width: 32,
            height: 32,
            channels: 3,
            label: Some(rec[0] as u32),
        })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(10)
    }

    fn class_names(&self) -> Vec<String> {
        CLASSES.iter().map(|s| s.to_string()).collect()
    }

    fn channels(&self) -> usize {
        3
    }

    fn describe(&self) -> String {
        format!(
            "{} images 32×32 RGB, 10 classes, CIFAR-10 from {}",
            self.len(),
            self.dir.display()
        )
    }
}

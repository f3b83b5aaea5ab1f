//! `diffuse data fetch`: the public data sets the docs name, downloaded from where their
//! authors publish them (or read from a local copy with `--from`), checked against published
//! checksums and installed where [`crate::datasets::known_datasets`] looks.
//!
//! A download goes to `FILE.part` and resumes from its length with an HTTP range request (a
//! server that ignores the range restarts it); a checksum mismatch deletes the file and says
//! so. IDX files are checked by the MD5 of their decompressed content, so any gzip of the same
//! data passes; archives by their own digest.

use crate::{Error, Result};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What a file's bytes must hash to.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// MD5 of the gzip-decompressed content.
    GunzipMd5(&'static str),
    Md5(&'static str),
    Sha256(&'static str),
}

/// One file of a data set: its name and where it is published.
#[derive(Debug, Clone)]
pub struct Remote {
    pub file: &'static str,
    pub url: String,
    pub check: Check,
}

/// How the downloaded files become the data set's folder.
#[derive(Debug, Clone, Copy)]
pub enum Install {
    /// The files as they are.
    Files,
    /// A `.tar.gz`: entries under `prefix` (stripped), those whose path (after the prefix)
    /// starts with one of `keep`.
    TarGz {
        prefix: &'static str,
        keep: &'static [&'static str],
    },
}

/// A data set `diffuse data fetch` knows.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: &'static str,
    pub files: Vec<Remote>,
    pub install: Install,
    /// The credit its licence asks for, printed after fetching.
    pub notice: &'static str,
}

fn idx(base: &str, files: [(&'static str, &'static str); 4]) -> Vec<Remote> {
    files
        .into_iter()
        .map(|(file, md5)| Remote {
            file,
            url: format!("{base}/{file}"),
            check: Check::GunzipMd5(md5),
        })
        .collect()
}

/// The data sets `data fetch` knows, with their official addresses. `mirror`, when given,
/// replaces each address's scheme and host (`DIFFUSE_DATA_MIRROR`; tests use a loopback
/// server).
pub fn sources(mirror: Option<&str>) -> Vec<Source> {
    let at = |url: &str| match mirror {
        None => url.to_string(),
        Some(m) => {
            let path = url.splitn(4, '/').nth(3).unwrap_or("");
            format!("{}/{path}", m.trim_end_matches('/'))
        }
    };
    vec![
        Source {
            name: "mnist",
            files: idx(
                &at("https://ossci-datasets.s3.amazonaws.com/mnist"),
                [
                    ("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
                    ("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624"),
                    ("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
                    ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
                ],
            ),
            install: Install::Files,
            notice: "MNIST: Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0",
        },
        Source {
            name: "fashion-mnist",
            files: idx(
                &at("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"),
                [
                    ("train-images-idx3-ubyte.gz", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
                    ("train-labels-idx1-ubyte.gz", "9018921c3c673c538a1fc5bad174d6f9"),
                    ("t10k-images-idx3-ubyte.gz", "8181f5470baa50b63fa0f6fddb340f0a"),
                    ("t10k-labels-idx1-ubyte.gz", "15d484375f8d13e6eb1aabb0c3f46965"),
                ],
            ),
            install: Install::Files,
            notice: "Fashion-MNIST: © Zalando SE; MIT licence",
        },
        Source {
            name: "cifar10",
            files: vec![Remote {
                file: "cifar-10-binary.tar.gz",
                url: at("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
                check: Check::Md5("c32a1d4ab5d03f1284b67883e8d87530"),
            }],
            install: Install::TarGz {
                prefix: "cifar-10-batches-bin/",
                keep: &["data_batch_", "test_batch.bin", "batches.meta.txt"],
            },
            notice: "CIFAR-10: A. Krizhevsky, 2009, Learning Multiple Layers of Features from Tiny Images",
        },
        Source {
            name: "openmoji",
            files: vec![Remote {
                file: "openmoji-17.0.0.tgz",
                url: at("https://registry.npmjs.org/openmoji/-/openmoji-17.0.0.tgz"),
                check: Check::Sha256(
                    "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68",
                ),
            }],
            install: Install::TarGz {
                prefix: "package/",
                keep: &["color/svg/", "data/openmoji.csv", "LICENSE"],
            },
            notice: crate::datasets::openmoji::ATTRIBUTION,
        },
    ]
}

/// Progress of one file: (file, bytes so far, total bytes when known).
pub type OnProgress<'a> = &'a mut dyn FnMut(&str, u64, Option<u64>);

/// Fetches `source` into `dir` (created; its files replaced only once all are verified):
/// downloads each file into `dir/.download/`, or takes it from `from` (the file itself, or a
/// folder holding it) without any network. Returns the installed folder.
pub fn fetch(
    source: &Source,
    dir: &Path,
    from: Option<&Path>,
    progress: OnProgress,
) -> Result<PathBuf> {
    let staging = dir.join(".download");
    std::fs::create_dir_all(&staging).map_err(Error::io(&staging))?;
    let mut got = Vec::new();
    for r in &source.files {
        let path = match from {
            Some(f) if f.is_dir() => f.join(r.file),
            Some(f) if source.files.len() == 1 => f.to_path_buf(),
            Some(f) => {
                return Err(Error::Invalid(format!(
                    "--from {}: {} has {} files; give the folder that holds them",
                    f.display(),
                    source.name,
                    source.files.len()
                )))
            }
            None => {
                let p = staging.join(r.file);
                download(&r.url, &p, &mut |n, t| progress(r.file, n, t))?;
                p
            }
        };
        if let Err(e) = verify(&path, r.check) {
            if from.is_none() {
                let _ = std::fs::remove_file(&path);
                return Err(Error::Invalid(format!(
                    "{e}; the download is deleted, run the command again to fetch it anew"
                )));
            }
            return Err(e);
        }
        got.push((r, path));
    }
    for (r, path) in &got {
        match source.install {
            Install::Files => {
                let dst = dir.join(r.file);
                if *path != dst {
                    std::fs::copy(path, &dst).map_err(Error::io(&dst))?;
                }
            }
            Install::TarGz { prefix, keep } => untar(path, dir, prefix, keep)?,
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(dir.to_path_buf())
}

/// GET `url` into `dst`, resuming `dst.part` with a range request when one is left.
fn download(url: &str, dst: &Path, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<()> {
    if dst.exists() {
        return Ok(());
    }
    let part = dst.with_extension("part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = ureq::get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| match e {
        ureq::Error::Status(code, _) => Error::Invalid(format!("{url}: HTTP {code}")),
        ureq::Error::Transport(t) => Error::Invalid(format!(
            "{url}: cannot download ({t}); offline, fetch it elsewhere and use --from FILE"
        )),
    })?;
    let resumed = resp.status() == 206 && have > 0;
    let len: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let total = len.map(|l| if resumed { l + have } else { l });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(Error::io(&part))?;
    let mut done = if resumed { have } else { 0 };
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            Error::Invalid(format!(
                "{url}: the download broke off ({e}); run the command again to resume"
            ))
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(Error::io(&part))?;
        done += n as u64;
        progress(done, total);
    }
    file.sync_all().map_err(Error::io(&part))?;
    if total.is_some_and(|t| t != done) {
        return Err(Error::Invalid(format!(
            "{url}: got {done} of {} bytes; run the command again to resume",
            total.unwrap_or(0)
        )));
    }
    std::fs::rename(&part, dst).map_err(Error::io(dst))
}

/// Checks `path` against `check`: one line naming the file, the expected and the actual digest.
pub fn verify(path: &Path, check: Check) -> Result<()> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let (want, got) = match check {
        Check::GunzipMd5(want) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .map_err(|e| {
                    Error::Invalid(format!("{}: not a gzip file ({e})", path.display()))
                })?;
            (want, hex(&md5::Md5::digest(&out)))
        }
        Check::Md5(want) => (want, hex(&md5::Md5::digest(&bytes))),
        Check::Sha256(want) => (want, hex(&sha2::Sha256::digest(&bytes))),
    };
    if got == want {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{}: checksum mismatch (expected {want}, got {got})",
            path.display()
        )))
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks the entries of a `.tar.gz` under `prefix` whose rest starts with one of `keep`.
fn untar(archive: &Path, dir: &Path, prefix: &str, keep: &[&str]) -> Result<()> {
    let f = std::fs::File::open(archive).map_err(Error::io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let bad = |e: std::io::Error| Error::Invalid(format!("{}: {e}", archive.display()));
    let mut n = 0;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        // No absolute paths or `..`: the entry lands inside `dir`.
        if rest.split('/').any(|c| c == "..") || rest.starts_with('/') {
            return Err(Error::Invalid(format!(
                "{}: entry {path} points outside the data folder",
                archive.display()
            )));
        }
        if !keep.iter().any(|k| rest.starts_with(k)) || !entry.header().entry_type().is_file() {
            continue;
        }
        let dst = dir.join(rest);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(Error::io(p))?;
        }
        entry.unpack(&dst).map_err(bad)?;
        n += 1;
    }
    if n == 0 {
        return Err(Error::Invalid(format!(
            "{}: no files under {prefix} in the archive",
            archive.display()
        )));
    }
    Ok(())
}

//! Hub ids (`ORG/NAME[@REVISION]`, as `from_pretrained("google/ddpm-cifar10-32")` takes them),
//! resolved as `huggingface_hub.snapshot_download` does: first the local cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), where
//! `models--ORG--NAME/refs/REVISION` (default `main`) holds a commit hash and the files lie in
//! `models--ORG--NAME/snapshots/HASH/` (a 40-hex revision names the snapshot directly); then,
//! unless offline (`HF_HUB_OFFLINE=1` or [`set_offline`]), the hub itself ([`Hub::snapshot`]).

mod download;

pub use download::{select_files, Hub};

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// Never touch the network in this process (the CLI's `--offline`), whatever the environment.
pub fn set_offline(offline: bool) {
    OFFLINE.store(offline, Ordering::Relaxed);
}

/// Whether hub ids resolve from the cache only: [`set_offline`], or `HF_HUB_OFFLINE` set to a
/// true value (`1`, `true`, `yes`, `on`) as huggingface_hub reads it.
pub fn offline() -> bool {
    OFFLINE.load(Ordering::Relaxed)
        || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
}

/// `ORG/NAME` and the revision of a hub id; None for a string that is not one.
pub fn parse_id(s: &str) -> Option<(&str, &str, &str)> {
    let (repo, rev) = s.split_once('@').unwrap_or((s, "main"));
    let (org, name) = repo.split_once('/')?;
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (ok(org) && ok(name) && !rev.is_empty() && !rev.contains(['/', '\\']))
        .then_some((org, name, rev))
}

/// The hub cache directory from the environment, as huggingface_hub finds it.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    hf_home().join("hub")
}

/// `$HF_HOME`, else `~/.cache/huggingface` (where the token of `huggingface-cli login` lies).
fn hf_home() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface")
}

/// Where a hub id's snapshot lies in `cache`, or why it is not there.
enum Cached {
    Snapshot(PathBuf),
    /// No ref of that name: the file diffuse looked for.
    NoRef(PathBuf),
    /// The ref names a snapshot folder that is missing.
    NoSnapshot(String, PathBuf),
}

fn lookup(cache: &Path, org: &str, name: &str, rev: &str) -> Cached {
    let repo = cache.join(format!("models--{org}--{name}"));
    let is_hash = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    let hash = if is_hash {
        rev.to_string()
    } else {
        let r = repo.join("refs").join(rev);
        match std::fs::read_to_string(&r) {
            Ok(h) => h.trim().to_string(),
            Err(_) => return Cached::NoRef(r),
        }
    };
    let snap = repo.join("snapshots").join(&hash);
    if snap.is_dir() {
        Cached::Snapshot(snap)
    } else {
        Cached::NoSnapshot(hash, snap)
    }
}

/// Why a hub id is not in the cache: where diffuse looked, and how to fetch it by hand.
struct Miss {
    looked: String,
    fetch: String,
}

/// The snapshot folder of hub id `id` in `cache`, or why it is not there.
fn find(cache: &Path, id: &str) -> Result<Result<PathBuf, Miss>> {
    let (org, name, rev) =
        parse_id(id).ok_or_else(|| Error::Hub(format!("{id}: not a hub id (ORG/NAME[@REV])")))?;
    Ok(match lookup(cache, org, name, rev) {
        Cached::Snapshot(s) => Ok(s),
        Cached::NoRef(r) => Err(Miss {
            looked: format!(
                "{id}: not a folder, and not in the Hugging Face cache (looked for {})",
                r.display()
            ),
            fetch: format!(
                "fetch it with `huggingface-cli download {org}/{name}` (or set HF_HUB_CACHE)"
            ),
        }),
        Cached::NoSnapshot(hash, snap) => Err(Miss {
            looked: format!(
                "{id}: the Hugging Face cache names snapshot {hash} but {} is missing",
                snap.display()
            ),
            fetch: format!("fetch it again with `huggingface-cli download {org}/{name}`"),
        }),
    })
}

/// The snapshot folder of hub id `id` in `cache`, without the network.
pub fn resolve_in(cache: &Path, id: &str) -> Result<PathBuf> {
    find(cache, id)?.map_err(|m| Error::Hub(format!("{}; {}", m.looked, m.fetch)))
}

/// The snapshot folder of hub id `id`: from `cache` when it is there, else downloaded through
/// `hub` into `cache` (None: offline, the cache only).
pub fn resolve_id(cache: &Path, id: &str, hub: Option<&Hub>) -> Result<PathBuf> {
    let miss = match find(cache, id)? {
        Ok(snap) => return Ok(snap),
        Err(m) => m,
    };
    match hub {
        None => Err(Error::Hub(format!(
            "{}; downloading is off (--offline or HF_HUB_OFFLINE): {}",
            miss.looked, miss.fetch
        ))),
        Some(hub) => hub.snapshot(cache, id).map_err(|d| {
            let d = d.to_string();
            let why = d.strip_prefix(&format!("{id}: ")).unwrap_or(&d);
            Error::Hub(format!("{}; and {why}", miss.looked))
        }),
    }
}

/// `dir` itself when it exists, else the snapshot of the hub id it spells: from the cache, or
/// downloaded from the hub (`HF_ENDPOINT`, default huggingface.co) unless [`offline`].
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        return Ok(dir.to_path_buf());
    }
    match dir.to_str().filter(|s| parse_id(s).is_some()) {
        Some(id) => {
            let hub = (!offline()).then(Hub::from_env);
            resolve_id(&cache_dir(), id, hub.as_ref())
        }
        None => Err(Error::Weights(format!(
            "{}: not a folder (expected a diffusers pipeline or model folder, or a hub id ORG/NAME)",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache as `snapshot_download` leaves it: refs/main → hash → snapshots/hash/.
    fn cache() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--google--ddpm-cifar10-32");
        let hash = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), hash).unwrap();
        std::fs::write(repo.join("refs/v1"), format!("{hash}\n")).unwrap();
        let snap = repo.join("snapshots").join(hash);
        std::fs::create_dir_all(&snap).unwrap();
        (tmp, snap)
    }

    #[test]
    fn hub_ids_resolve_from_the_cache_at_a_ref_or_a_hash() {
        let (tmp, snap) = cache();
        for id in [
            "google/ddpm-cifar10-32",
            "google/ddpm-cifar10-32@v1",
            "google/ddpm-cifar10-32@0123456789abcdef0123456789abcdef01234567",
        ] {
            assert_eq!(resolve_in(tmp.path(), id).unwrap(), snap, "{id}");
            assert_eq!(resolve_id(tmp.path(), id, None).unwrap(), snap, "{id}");
        }
        let e = resolve_in(tmp.path(), "google/ddpm-celebahq-256")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not in the Hugging Face cache")
                && e.contains("models--google--ddpm-celebahq-256")
                && e.contains("huggingface-cli download google/ddpm-celebahq-256"),
            "{e}"
        );
        assert!(resolve_in(tmp.path(), "google/ddpm-cifar10-32@nope").is_err());
        let e = resolve_id(tmp.path(), "google/ddpm-celebahq-256", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("downloading is off (--offline"), "{e}");
    }

    #[test]
    fn offline_follows_the_flag_and_huggingface_hub_truthy_values() {
        // Only the flag here: the environment is shared with the other tests of this binary.
        assert!(!OFFLINE.load(Ordering::Relaxed));
        set_offline(true);
        assert!(offline());
        set_offline(false);
    }

    #[test]
    fn paths_are_not_hub_ids() {
        assert_eq!(
            parse_id("google/ddpm-cifar10-32"),
            Some(("google", "ddpm-cifar10-32", "main"))
        );
        for s in [
            "runs/mnist/extra",
            "/abs/path",
            "./x",
            "../up/x",
            "model",
            "a/",
            "/b",
        ] {
            assert_eq!(parse_id(s), None, "{s}");
        }
        let e = resolve(Path::new("/no/such/model"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a folder"), "{e}");
    }
}

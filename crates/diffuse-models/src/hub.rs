//! Hub ids (`ORG/NAME[@REVISION]`, as `from_pretrained("google/ddpm-cifar10-32")` takes them)
//! resolved from the local Hugging Face cache as `huggingface_hub.snapshot_download` lays it
//! out: `$HF_HUB_CACHE` (else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), then
//! `models--ORG--NAME/refs/REVISION` (default `main`) holding a commit hash, and the files in
//! `models--ORG--NAME/snapshots/HASH/`. A 40-hex revision names the snapshot directly.
//! Downloading is not built in: a model missing from the cache is an error that says where
//! diffuse looked and how to fetch it.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

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
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface").join("hub")
}

/// The snapshot folder of hub id `id` in `cache`.
pub fn resolve_in(cache: &Path, id: &str) -> Result<PathBuf> {
    let (org, name, rev) = parse_id(id)
        .ok_or_else(|| Error::Weights(format!("{id}: not a hub id (ORG/NAME[@REV])")))?;
    let repo = cache.join(format!("models--{org}--{name}"));
    let is_hash = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    let hash = if is_hash {
        rev.to_string()
    } else {
        let r = repo.join("refs").join(rev);
        match std::fs::read_to_string(&r) {
            Ok(h) => h.trim().to_string(),
            Err(_) => {
                return Err(Error::Weights(format!(
                    "{id}: not a folder, and not in the Hugging Face cache (looked for {}); \
                     fetch it with `huggingface-cli download {org}/{name}` (or set HF_HUB_CACHE)",
                    r.display()
                )))
            }
        }
    };
    let snap = repo.join("snapshots").join(&hash);
    if snap.is_dir() {
        Ok(snap)
    } else {
        Err(Error::Weights(format!(
            "{id}: the Hugging Face cache names snapshot {hash} but {} is missing; fetch it \
             again with `huggingface-cli download {org}/{name}`",
            snap.display()
        )))
    }
}

/// `dir` itself when it exists, else the cached snapshot of the hub id it spells.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        return Ok(dir.to_path_buf());
    }
    match dir.to_str().filter(|s| parse_id(s).is_some()) {
        Some(id) => resolve_in(&cache_dir(), id),
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

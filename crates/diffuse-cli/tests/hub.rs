//! Hub ids (issue 20): `--model ORG/NAME` downloads from the hub (`HF_ENDPOINT`, here a
//! loopback server that answers as huggingface.co does) into the Hugging Face cache, fetching
//! only what diffusers would; a second run, `--offline` and `HF_HUB_OFFLINE=1` use the cache
//! and never touch the network; misses and dead endpoints are one line saying where diffuse
//! looked; `train.init_from` takes a hub id too. No test needs the internet.

mod common;

use common::{assert_one_line_error, command, stderr};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SHA: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffuse-models/tests/fixtures")
}

/// A hub serving one repository `acme/digits` at commit [`SHA`] from `root`: the model info API
/// (`/api/models/ORG/NAME/revision/REV`) and `/ORG/NAME/resolve/REV/FILE` with ranges, ETag
/// and `X-Repo-Commit`, as hf-hub reads them. Counts the requests it answers.
struct FakeHub {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    fn start(root: PathBuf) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let root = root.clone();
                std::thread::spawn(move || answer(stream, &root));
            }
        });
        FakeHub { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            files_under(root, &e.path(), out);
        } else {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn answer(mut s: TcpStream, root: &Path) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("range: bytes=")
            .map(String::from)
    });
    let reply = |s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str("\r\n");
        let _ = s.write_all(r.as_bytes());
        let _ = s.write_all(body);
    };
    let not_found = |s: &mut TcpStream| {
        reply(
            s,
            "404 Not Found",
            &[],
            b"{\"error\":\"Repository not found\"}",
        )
    };
    if let Some(rest) = path.strip_prefix("/api/models/acme/digits/revision/") {
        let _rev = rest;
        let mut files = Vec::new();
        files_under(root, root, &mut files);
        let siblings: Vec<_> = files
            .iter()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": "acme/digits", "sha": SHA, "siblings": siblings });
        let ct = [("Content-Type".to_string(), "application/json".to_string())];
        return reply(&mut s, "200 OK", &ct, body.to_string().as_bytes());
    }
    let Some(rest) = path.strip_prefix("/acme/digits/resolve/") else {
        return not_found(&mut s);
    };
    let file = rest.split_once('/').map_or("", |(_, f)| f);
    let Ok(bytes) = std::fs::read(root.join(file)) else {
        return not_found(&mut s);
    };
    // An ETag that changes with the content, as the hub's blob hashes do.
    let etag = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    let mut headers = vec![
        (
            "ETag".to_string(),
            format!("\"{etag:016x}{:08x}\"", bytes.len()),
        ),
        ("X-Repo-Commit".to_string(), SHA.to_string()),
    ];
    let (start, end) = match range.as_deref().and_then(|r| r.trim().split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(bytes.len() - 1);
            (a, b.min(bytes.len() - 1))
        }
        None => (0, bytes.len() - 1),
    };
    headers.push((
        "Content-Range".into(),
        format!("bytes {start}-{end}/{}", bytes.len()),
    ));
    reply(&mut s, "206 Partial Content", &headers, &bytes[start..=end]);
}

/// The repository the fake hub serves: a diffusers pipeline, plus files diffusers would not
/// fetch (a `.bin` beside the safetensors, Flax weights, a README).
fn repo_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pipeline_basic");
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ] {
        std::fs::create_dir_all(dir.path().join(f).parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("unet/diffusion_pytorch_model.bin"),
        b"not fetched",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("unet/diffusion_flax_model.msgpack"),
        b"not fetched",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), b"# digits").unwrap();
    dir
}

/// `models--ORG--NAME` in `cache` as `snapshot_download` leaves it: `refs/main` naming [`SHA`],
/// and the (empty) snapshot folder, returned.
fn cached_repo(cache: &Path, org: &str, name: &str) -> PathBuf {
    let repo = cache.join(format!("models--{org}--{name}"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), SHA).unwrap();
    let snap = repo.join("snapshots").join(SHA);
    std::fs::create_dir_all(&snap).unwrap();
    snap
}

fn sample(model: &str, cache: &Path, endpoint: &str, extra: &[&str]) -> std::process::Output {
    let out = cache.join("o.safetensors");
    let mut args = vec![
        "sample",
        "--model",
        model,
        "--steps",
        "2",
        "--num-images",
        "1",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    command(&args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env("HF_HOME", cache.join("home"))
        .output()
        .unwrap()
}

#[test]
fn hub_ids_download_once_into_the_cache_then_work_offline() {
    let repo = repo_root();
    let hub = FakeHub::start(repo.path().to_path_buf());
    let cache = tempfile::tempdir().unwrap();

    let o = sample("acme/digits", cache.path(), &hub.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fetched = hub.requests();
    assert!(fetched > 0);
    let top = cache.path().join("models--acme--digits");
    assert_eq!(std::fs::read_to_string(top.join("refs/main")).unwrap(), SHA);
    assert!(
        !top.join("refs").join(SHA).exists(),
        "only the refs huggingface_hub writes"
    );
    let snap = top.join("snapshots").join(SHA);
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(repo.path().join(f)).unwrap(),
            "{f}"
        );
    }
    for f in [
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_flax_model.msgpack",
        "README.md",
    ] {
        assert!(
            !snap.join(f).exists(),
            "{f} is not what diffusers downloads"
        );
    }

    // From the cache now: no request, online or offline.
    let o = sample("acme/digits", cache.path(), &hub.url, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sample("acme/digits", cache.path(), &hub.url, &["--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(hub.requests(), fetched, "a cached model needs no network");

    // A model not in the cache, offline: one line, and still no request.
    let o = sample("acme/letters", cache.path(), &hub.url, &["--offline"]);
    assert_one_line_error(&o, "downloading is off (--offline or HF_HUB_OFFLINE)");
    let o = command(&["sample", "--model", "acme/letters", "--output", "x.png"])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_one_line_error(&o, "models--acme--letters");
    assert_eq!(hub.requests(), fetched);

    // Online, the hub has no such model: where diffuse looked and what the hub said.
    let o = sample("acme/letters", cache.path(), &hub.url, &[]);
    assert_one_line_error(&o, "has no model acme/letters at revision main (HTTP 404)");
    assert!(
        stderr(&o).contains("models--acme--letters/refs/main"),
        "{}",
        stderr(&o)
    );
}

/// `--model ORG/NAME` from a Hugging Face cache tree (`HF_HUB_CACHE`) alone, offline; a
/// missing one says where diffuse looked.
#[test]
fn hub_ids_resolve_from_the_local_cache() {
    let cache = tempfile::tempdir().unwrap();
    let snap = cached_repo(cache.path(), "acme", "digits");
    diffuse_models::weights::copy_model_folder(&fixtures().join("unet_class_cond"), &snap).unwrap();
    // Offline, with an endpoint where nothing listens: the cache alone.
    let run = |model: &str| {
        sample(
            model,
            cache.path(),
            "http://127.0.0.1:9",
            &["--class", "3", "--offline"],
        )
    };
    let o = run("acme/digits");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cache.path().join("o.safetensors").exists());
    assert_one_line_error(&run("acme/letters"), "not in the Hugging Face cache");
}

#[test]
fn an_unreachable_hub_is_one_line_that_suggests_offline() {
    let cache = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let o = sample("acme/digits", cache.path(), &dead, &[]);
    assert_one_line_error(&o, "could not be reached");
    assert!(stderr(&o).contains("--offline"), "{}", stderr(&o));
}

/// A hub id in the cache serves `train.init_from` and `convert` as it serves `sample`.
#[test]
fn init_from_and_convert_take_hub_ids() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let train = |out: &Path, init: Option<&str>| {
        let mut args = vec![
            "train".to_string(),
            "--config".into(),
            tiny.to_str().unwrap().into(),
            "--output".into(),
            out.to_str().unwrap().into(),
            "--max-steps".into(),
            "2".into(),
            "--quiet".into(),
        ];
        if let Some(id) = init {
            args.extend(["--set".into(), format!("train.init_from={id:?}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        command(&args)
            .env("HF_HUB_CACHE", dir.path().join("cache"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let o = train(&base, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let snap = cached_repo(&dir.path().join("cache"), "acme", "tiny");
    // The pipeline part of the run folder, as a hub repository holds it.
    let mut files = Vec::new();
    files_under(&base, &base, &mut files);
    for f in files.iter().filter(|f| {
        f.as_str() == "model_index.json"
            || ["unet/", "unet_ema/", "scheduler/"]
                .iter()
                .any(|d| f.starts_with(d))
    }) {
        std::fs::create_dir_all(snap.join(f).parent().unwrap()).unwrap();
        std::fs::copy(base.join(f), snap.join(f)).unwrap();
    }

    let o = train(&dir.path().join("ft"), Some("acme/tiny"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&dir.path().join("ft2"), Some("acme/none"));
    assert_one_line_error(&o, "train.init_from");
    assert!(stderr(&o).contains("models--acme--none"), "{}", stderr(&o));

    let out = dir.path().join("converted");
    let o = command(&[
        "convert",
        "--model",
        "acme/tiny",
        "--output",
        out.to_str().unwrap(),
    ])
    .env("HF_HUB_CACHE", dir.path().join("cache"))
    .env("HF_HUB_OFFLINE", "1")
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model_index.json").exists());
}

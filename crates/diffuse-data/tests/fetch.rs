//! `data fetch` against a loopback HTTP server (no test needs the internet): MNIST from a
//! mirror with its real checksums, a tar.gz set unpacked, a half download resumed with a range
//! request, a server that ignores ranges restarting it, and a bad checksum deleting the file.

use diffuse_data::fetch::{self, Check, Install, Remote, Source};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Serves the files of `root` at `/PATH`, honouring `Range: bytes=N-` unless `ranges` is off.
/// Counts requests and the range requests it honoured.
struct Server {
    url: String,
    ranged: Arc<AtomicUsize>,
}

fn serve(root: PathBuf, ranges: bool) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let ranged = Arc::new(AtomicUsize::new(0));
    let count = ranged.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let from: Option<usize> = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("range: bytes=")
                    .and_then(|r| r.trim_end_matches('-').parse().ok())
            });
            let Ok(body) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let (status, part) = match from.filter(|_| ranges) {
                Some(n) => {
                    count.fetch_add(1, Ordering::SeqCst);
                    ("206 Partial Content", &body[n.min(body.len())..])
                }
                None => ("200 OK", &body[..]),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let _ = s.write_all(part);
        }
    });
    Server { url, ranged }
}

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

#[test]
fn mnist_from_a_mirror_passes_its_real_checksums_and_opens() {
    // The mirror lays files out as the official address does: /mnist/FILE.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("mnist")).unwrap();
    for e in std::fs::read_dir(mnist_dir()).unwrap().flatten() {
        std::fs::copy(e.path(), root.path().join("mnist").join(e.file_name())).unwrap();
    }
    let server = serve(root.path().to_path_buf(), true);
    let sources = fetch::sources(Some(&server.url));
    let mnist = sources.iter().find(|s| s.name == "mnist").unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut seen = 0u64;
    fetch::fetch(mnist, dst.path(), None, &mut |_, n, _| seen = seen.max(n)).unwrap();
    assert!(seen > 1_000_000, "progress reported {seen} bytes");
    let ds = diffuse_data::datasets::open(
        dst.path().to_str().unwrap(),
        diffuse_data::datasets::Split::Test,
    )
    .unwrap();
    assert_eq!(ds.len(), 10_000);
    assert!(!dst.path().join(".download").exists());
}

/// A small tar.gz data set, its bytes, and a Source for it at `url`.
fn tarball(url: &str, check: Option<Check>) -> (Vec<u8>, Source) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("package/data/list.csv", &b"a,b\n1,2\n"[..]),
        ("package/color/svg/1F600.svg", &[b'x'; 300_000][..]),
        ("package/README.md", &b"not kept"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, body).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let bytes = gz.finish().unwrap();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let sha: &'static str = Box::leak(sha.into_boxed_str());
    let source = Source {
        name: "toy",
        files: vec![Remote {
            file: "toy.tgz",
            url: format!("{url}/toy.tgz"),
            check: check.unwrap_or(Check::Sha256(sha)),
        }],
        install: Install::TarGz {
            prefix: "package/",
            keep: &["color/svg/", "data/"],
        },
        notice: "toy",
    };
    (bytes, source)
}

#[test]
fn a_half_download_resumes_with_a_range_request() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(root.path().to_path_buf(), true);
    let (bytes, source) = tarball(&server.url, None);
    std::fs::write(root.path().join("toy.tgz"), &bytes).unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dst.path().join(".download")).unwrap();
    std::fs::write(
        dst.path().join(".download/toy.part"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    fetch::fetch(&source, dst.path(), None, &mut |_, _, _| {}).unwrap();
    assert_eq!(server.ranged.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::read(dst.path().join("data/list.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    assert_eq!(
        std::fs::read(dst.path().join("color/svg/1F600.svg"))
            .unwrap()
            .len(),
        300_000
    );
    assert!(!dst.path().join("README.md").exists());
}

#[test]
fn a_server_that_ignores_ranges_restarts_the_download() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(root.path().to_path_buf(), false);
    let (bytes, source) = tarball(&server.url, None);
    std::fs::write(root.path().join("toy.tgz"), &bytes).unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dst.path().join(".download")).unwrap();
    // A stale half of another file: it must not be kept in front of the new bytes.
    std::fs::write(dst.path().join(".download/toy.part"), b"stale bytes").unwrap();
    fetch::fetch(&source, dst.path(), None, &mut |_, _, _| {}).unwrap();
    assert_eq!(server.ranged.load(Ordering::SeqCst), 0);
    assert!(dst.path().join("color/svg/1F600.svg").exists());
}

#[test]
fn a_bad_checksum_deletes_the_download_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let server = serve(root.path().to_path_buf(), true);
    let (bytes, source) = tarball(
        &server.url,
        Some(Check::Md5("00000000000000000000000000000000")),
    );
    std::fs::write(root.path().join("toy.tgz"), &bytes).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let e = fetch::fetch(&source, dst.path(), None, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("deleted") && !e.contains('\n'),
        "{e}"
    );
    assert!(!dst.path().join(".download/toy.tgz").exists());
    assert!(!dst.path().join("color").exists(), "nothing installed");
    // A missing file on the server is one line with the address.
    let mut missing = source.clone();
    missing.files[0].url = format!("{}/nope.tgz", server.url);
    let e = fetch::fetch(&missing, dst.path(), None, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.tgz: HTTP 404"), "{e}");
}

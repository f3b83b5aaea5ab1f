//! Every fuzz target on its committed corpus and regressions, then on seeded mutations of them
//! (`DIFFUSE_FUZZ_CASES` per target, default 400; the ONNX round trip a tenth of that): none may
//! panic. A failing input is written to `target/fuzz-failures/TARGET-N` and named.

use diffuse_fuzz::{mutate, TARGETS};
use rand::SeedableRng;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v.into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn run_one(name: &str, f: fn(&[u8]), i: usize, data: &[u8]) {
    if std::panic::catch_unwind(|| f(data)).is_err() {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
        std::fs::create_dir_all(&out).unwrap();
        let p = out.join(format!("{name}-{i}"));
        std::fs::write(&p, data).unwrap();
        panic!(
            "fuzz target {name} panicked on {} ({} bytes)",
            p.display(),
            data.len()
        );
    }
}

#[test]
fn every_target_survives_its_corpus_regressions_and_mutations() {
    let cases: usize = std::env::var("DIFFUSE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    // Quiet: the panics this catches are reported once, by run_one.
    std::panic::set_hook(Box::new(|_| {}));
    for &(name, f) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for (i, (_, data)) in seeds.iter().chain(&regressions).enumerate() {
            run_one(name, f, i, data);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = if name == "onnx_roundtrip" {
            cases / 10
        } else {
            cases
        };
        for i in 0..n {
            let a = &seeds[i % seeds.len()].1;
            let b = &seeds[(i / seeds.len() + 1) % seeds.len()].1;
            let data = mutate(&mut rng, a, b);
            run_one(name, f, 1_000_000 + i, &data);
        }
    }
}

//! End-to-end tests of the GPU-era paths that run on the CPU: `diffuse train
//! --nproc-per-node 2` (two processes, torchrun's variables, TCP all-reduce) against one
//! process, `--gpus` without the CUDA build, and `diffuse sample --dtype bf16`.

mod common;

use candle_core::{Device, Tensor};
use common::{assert_one_line_error, diffuse, stderr};
use std::path::{Path, PathBuf};
use std::process::Output;

fn check(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml")
}

fn load(path: &Path, name: &str) -> Vec<(String, Tensor)> {
    let mut m: Vec<(String, Tensor)> = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect();
    m.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!m.is_empty(), "{name}");
    m
}

/// max |a − b| / max |a| over the tensors of two files.
fn rel_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (load(a, "a"), load(b, "b"));
    let (mut d, mut m) = (0f32, 0f32);
    for ((ka, x), (kb, y)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        d = d.max(
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap(),
        );
        m = m.max(x.abs().unwrap().max_all().unwrap().to_scalar().unwrap());
    }
    d / m
}

#[test]
fn train_on_two_cpu_processes_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let cfg = tiny();
    let common = [
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--max-steps",
        "3",
        "--set",
        "data.batch_size=8",
        "--set",
        "train.checkpoint_every=3",
        "--quiet",
    ];
    let with = |out: &Path, extra: &[&str]| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend(["--output", out.to_str().unwrap()]);
        a.extend(extra);
        diffuse(&a)
    };
    check(&with(&one, &["--threads", "1"]));
    check(&with(
        &two,
        &["--nproc-per-node", "2", "--master-port", &port],
    ));
    let f = "unet/diffusion_pytorch_model.safetensors";
    let e = rel_diff(&one.join(f), &two.join(f));
    eprintln!(
        "1 process × 8 vs 2 processes × 4 (TCP all-reduce), 3 steps: max-abs rel diff {e:.3e}"
    );
    assert!(e < 1e-5, "{e}");
    // Rank 0 alone logs: one line per step.
    let log = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");

    // The folder holds a run: rank 0 refuses it and rank 1 stops with it (no rank waits);
    // with --overwrite both train and the folder holds the new run only.
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let t0 = std::time::Instant::now();
    let port = free_port();
    let o = with(&two, &["--nproc-per-node", "2", "--master-port", &port]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("already holds a run"), "{err}");
    assert!(
        t0.elapsed().as_secs() < 120,
        "the refused ranks took {:?}",
        t0.elapsed()
    );
    let port = free_port();
    check(&with(
        &two,
        &[
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
            "--overwrite",
        ],
    ));
    let log = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
}

#[test]
fn gpus_without_the_cuda_build_and_bad_launch_flags_are_one_line_errors() {
    let cfg = tiny();
    let base = [
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        "/nonexistent/x",
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        diffuse(&a)
    };
    if !cfg!(feature = "cuda") {
        assert_one_line_error(&run(&["--gpus", "2"]), "--features cuda");
    }
    assert_one_line_error(&run(&["--nproc-per-node", "2", "--gpus", "2"]), "not both");
    assert_one_line_error(
        &run(&["--nnodes", "2"]),
        "--nnodes/--node-rank go with --gpus",
    );
}

#[test]
fn sample_in_bf16_is_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/pipeline_basic");
    let noise = model.join("samples.safetensors");
    let mut out = Vec::new();
    for dtype in ["f32", "bf16", "f16"] {
        let path = dir.path().join(format!("{dtype}.safetensors"));
        check(&diffuse(&[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--steps",
            "5",
            "--sampler",
            "ddim",
            "--noise",
            noise.to_str().unwrap(),
            "--dtype",
            dtype,
            "--output",
            path.to_str().unwrap(),
            "--quiet",
        ]));
        out.push(path);
    }
    for (p, tol) in [(&out[1], 3e-2), (&out[2], 1e-2)] {
        let e = rel_diff(&out[0], p);
        eprintln!(
            "DDIM-5 of the fixture pipeline, {} vs f32: max-abs rel {e:.3e}",
            p.display()
        );
        assert!(e < tol, "{e}");
    }
    assert_one_line_error(
        &diffuse(&[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--dtype",
            "fp8",
        ]),
        "--dtype",
    );
}

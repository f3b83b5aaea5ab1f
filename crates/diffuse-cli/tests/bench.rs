//! End-to-end test of `diffuse bench` on the tiny preset (one run of each case), of what it
//! writes for the PyTorch side, and of the global `--threads` flag.

use serde_json::Value;
use std::process::{Command, Output};

fn diffuse(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffuse"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run diffuse")
}

const TINY: [&str; 14] = [
    "bench",
    "--preset",
    "tiny",
    "--runs",
    "1",
    "--warmup",
    "0",
    "--batches",
    "1,2",
    "--train-batch",
    "2",
    "--sample-images",
    "2",
    "--sample-steps=3",
];

#[test]
fn bench_tiny_writes_table_json_weights_and_check_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let weights = dir.path().join("pipe");
    let check = dir.path().join("check.safetensors");
    let mut args = vec!["--threads", "1"];
    args.extend(TINY);
    args.extend([
        "--json",
        json.to_str().unwrap(),
        "--save-weights",
        weights.to_str().unwrap(),
        "--save-check",
        check.to_str().unwrap(),
    ]);
    let o = diffuse(&args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    for row in [
        "| forward_b1 |",
        "| forward_b2 |",
        "| ddim3_2 |",
        "| train_b2 |",
    ] {
        assert!(table.contains(row), "{table}");
    }
    assert!(table.contains("GFLOP/s"), "{table}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["threads"], 1, "--threads 1 must reach candle");
    assert_eq!(v["machine_peak"]["cores"], 1);
    assert_eq!(v["measurements"].as_array().unwrap().len(), 4);
    assert_eq!(v["model"]["name"], "tiny");

    // A diffusers DDIM pipeline folder.
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(weights.join(f).is_file(), "{f} missing");
    }
    let t = candle_core::safetensors::load(&check, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["check_output"].dims(), [4, 1, 8, 8]);
    assert_eq!(t["sample_images"].dims(), [2, 1, 8, 8]);
    assert_eq!(t["sample5_images"].dims(), [2, 1, 8, 8]);
    assert_eq!(t["train_x"].dims(), [2, 1, 8, 8]);

    // The saved config benchmarks the same model: same parameter count, only the train case.
    let mut args = vec![
        "bench",
        "--config",
        weights
            .join("unet/config.json")
            .to_str()
            .unwrap()
            .to_owned()
            .leak(),
    ];
    args.extend(&TINY[3..]);
    args.extend(["--only", "train", "--json", json.to_str().unwrap()]);
    let o = diffuse(&args, &[("DIFFUSE_THREADS", "2")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(w["model"]["params"], v["model"]["params"]);
    assert_eq!(w["threads"], 2, "DIFFUSE_THREADS must reach candle");
    assert_eq!(w["measurements"][0]["name"], "train_b2");
}

#[test]
fn bench_errors_are_one_line() {
    for (args, needle) in [
        (vec!["bench", "--preset", "huge"], "unknown bench preset"),
        (
            vec!["bench", "--preset", "tiny", "--only", "fly"],
            "unknown measurement",
        ),
        (
            vec!["--threads", "0", "bench", "--preset", "tiny"],
            "--threads",
        ),
    ] {
        let o = diffuse(&args, &[]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    }
}

#[test]
fn tune_convs_writes_a_table_that_later_runs_read_and_a_corrupt_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("cache").join("conv-table.json");
    let env = [("DIFFUSE_CONV_TABLE", table.to_str().unwrap())];
    let mut args = vec!["--threads", "1"];
    args.extend(TINY);
    args.push("--tune-convs");
    let o = diffuse(&args, &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("| Forward |") && printed.contains("| GradWeight |"),
        "{printed}"
    );
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&table).unwrap()).unwrap();
    let entries = t["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        assert_eq!(e["threads"], 1);
        assert!(e["ms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.as_f64().unwrap() > 0.0));
    }
    // A later run reads it without a word; a corrupt table is named once and ignored.
    let mut run = vec!["--threads", "1"];
    run.extend(TINY);
    run.extend(["--only", "forward"]);
    let o = diffuse(&run, &env);
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("convolution table"));
    std::fs::write(&table, "{ not json").unwrap();
    let o = diffuse(&run, &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("ignoring the convolution table").count(),
        1,
        "{err}"
    );
    assert!(err.contains("--tune-convs"), "{err}");
}

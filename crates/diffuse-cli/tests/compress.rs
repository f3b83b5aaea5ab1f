//! End-to-end tests of `diffuse quantize` and `diffuse prune`: the outputs load through the one
//! loader in `sample` (which `eval` and `serve` share), a pruned model fine-tunes with `diffuse
//! train` and `train.init_from`, and bad input gives one-line errors and writes nothing.

mod common;

use common::{assert_one_line_error, command, max_rel, stderr};
use std::path::{Path, PathBuf};
use std::process::Output;

fn diffuse(args: &[&str]) -> Output {
    command(args)
        .env("DIFFUSE_THREADS", "2")
        .output()
        .expect("run diffuse")
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffuse-models/tests/fixtures")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn images(path: &Path) -> Vec<f32> {
    let m = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    m["images"].flatten_all().unwrap().to_vec1().unwrap()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

#[test]
fn quantized_pipeline_samples_close_to_fp32_and_bad_input_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pipeline_basic");
    let q = dir.path().join("q");
    ok(diffuse(&[
        "quantize",
        "--model",
        p(&src),
        "--output",
        p(&q),
    ]));
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
    ] {
        assert!(q.join(f).exists(), "{f}");
    }
    let (a, b) = (
        size(&src.join("unet").join(WEIGHTS)),
        size(&q.join("unet").join(WEIGHTS)),
    );
    assert!(b * 3 < a, "{b} vs {a}");
    let cfg = std::fs::read_to_string(q.join("unet/config.json")).unwrap();
    assert!(cfg.contains("\"quant_method\": \"diffuse_int8\""), "{cfg}");

    // The recorded diffusers DDIM loop: fp32 matches to 1e-3 (cli.rs); int8 weights stay close.
    let rec = src.join("samples.safetensors");
    let want: Vec<f32> = candle_core::safetensors::load(&rec, &candle_core::Device::Cpu).unwrap()
        ["ddim_images"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let out = dir.path().join("s.safetensors");
    let sample = |model: &Path| {
        diffuse(&[
            "sample",
            "--model",
            p(model),
            "--steps",
            "5",
            "--noise",
            p(&rec),
            "--output",
            p(&out),
            "--quiet",
        ])
    };
    ok(sample(&q));
    let e = max_rel(&images(&out), &want);
    assert!(
        e <= 5e-2,
        "int8 pipeline differs from fp32 diffusers by {e}"
    );

    // An existing output is refused and left alone; so is a model that is not there.
    let before = std::fs::read(q.join("unet").join(WEIGHTS)).unwrap();
    let o = diffuse(&["quantize", "--model", p(&src), "--output", p(&q)]);
    assert_one_line_error(&o, "already exists");
    assert_eq!(std::fs::read(q.join("unet").join(WEIGHTS)).unwrap(), before);
    let o = diffuse(&[
        "quantize",
        "--model",
        "/no/such/model",
        "--output",
        p(&dir.path().join("x")),
    ]);
    assert_one_line_error(&o, "/no/such/model");
    assert!(!dir.path().join("x").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );

    // An unknown quant_method, and truncated int8 weights.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(bad.join("unet")).unwrap();
    std::fs::copy(q.join("model_index.json"), bad.join("model_index.json")).unwrap();
    std::fs::copy(q.join("unet").join(WEIGHTS), bad.join("unet").join(WEIGHTS)).unwrap();
    std::fs::write(
        bad.join("unet/config.json"),
        cfg.replace("diffuse_int8", "awq"),
    )
    .unwrap();
    assert_one_line_error(&sample(&bad), "quant_method");
    std::fs::write(bad.join("unet/config.json"), &cfg).unwrap();
    std::fs::write(bad.join("unet").join(WEIGHTS), &before[..before.len() / 2]).unwrap();
    assert_one_line_error(&sample(&bad), "safetensors");
}

#[test]
fn pruned_model_fine_tunes_samples_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    // A tiny class-conditional UNet (16/32 channels, 8 groups), a few steps.
    let base = dir.path().join("base");
    ok(diffuse(&[
        "train",
        "--config",
        p(&examples.join("tiny.toml")),
        "--output",
        p(&base),
        "--max-steps",
        "3",
        "--set",
        "data.batch_size=4",
        "--quiet",
    ]));
    let pruned = dir.path().join("pruned");
    let o = ok(diffuse(&[
        "prune",
        "--model",
        p(&base),
        "--output",
        p(&pruned),
        "--amount",
        "0.5",
    ]));
    assert!(
        stderr(&o).contains("16 → 8 inner channels"),
        "{}",
        stderr(&o)
    );
    assert!(
        !pruned.join("unet_ema").exists(),
        "one network: the EMA one"
    );
    let cfg = std::fs::read_to_string(pruned.join("unet/config.json")).unwrap();
    assert!(cfg.contains("diffuse_resnet_inner_channels"), "{cfg}");
    assert!(size(&pruned.join("unet").join(WEIGHTS)) < size(&base.join("unet_ema").join(WEIGHTS)));

    // Fine-tune through the normal trainer: the architecture comes from init_from.
    let ft = dir.path().join("ft");
    ok(diffuse(&[
        "train",
        "--config",
        p(&examples.join("mnist-eps-finetune.toml")),
        "--set",
        &format!("train.init_from={:?}", p(&pruned)),
        "--set",
        "data.batch_size=4",
        "--max-steps",
        "3",
        "--output",
        p(&ft),
        "--quiet",
    ]));
    let ft_cfg = std::fs::read_to_string(ft.join("unet_ema/config.json")).unwrap();
    assert!(ft_cfg.contains("diffuse_resnet_inner_channels"), "{ft_cfg}");

    // Both sample; the fine-tuned one also after int8.
    let ftq = dir.path().join("ftq");
    ok(diffuse(&[
        "quantize",
        "--model",
        p(&ft),
        "--output",
        p(&ftq),
    ]));
    for model in [&pruned, &ft, &ftq] {
        let out = dir.path().join("s.safetensors");
        ok(diffuse(&[
            "sample",
            "--model",
            p(model),
            "--class",
            "3",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--output",
            p(&out),
            "--quiet",
        ]));
        assert!(images(&out).iter().all(|v| v.is_finite()));
    }

    // The unpruned architecture refuses the pruned weights, naming the tensor.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(base.join("unet_ema/config.json"), mixed.join("config.json")).unwrap();
    std::fs::copy(pruned.join("unet").join(WEIGHTS), mixed.join(WEIGHTS)).unwrap();
    let o = diffuse(&[
        "sample",
        "--model",
        p(&mixed),
        "--class",
        "1",
        "--steps",
        "1",
        "--output",
        p(&dir.path().join("m.png")),
    ]);
    assert_one_line_error(&o, "down_blocks.0.resnets.0.conv1");

    // Bad amounts and a DiT are refused, writing nothing.
    let no = dir.path().join("no");
    let o = diffuse(&[
        "prune",
        "--model",
        p(&base),
        "--output",
        p(&no),
        "--amount",
        "1",
    ]);
    assert_one_line_error(&o, "--amount");
    let o = diffuse(&[
        "prune",
        "--model",
        p(&fixtures().join("dit_p2_rgb")),
        "--output",
        p(&no),
    ]);
    assert_one_line_error(&o, "UNet2DModel");
    let o = diffuse(&[
        "prune",
        "--model",
        p(&base),
        "--output",
        p(&no),
        "--criterion",
        "l0",
    ]);
    assert_one_line_error(&o, "l1, l2");
    assert!(!no.exists());
}

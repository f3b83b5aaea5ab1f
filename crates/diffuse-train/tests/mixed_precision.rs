//! Mixed-precision training (accelerate's `mixed_precision`) on the CPU: a bf16 run's loss
//! falls like the f32 run's, checkpoints and optimizer state stay f32, a stopped bf16 run
//! resumes bit for bit, fp16 keeps its loss scale across a resume, and bad values are refused.

use candle_core::{DType, Device};
use diffuse_train::trainer::{train, TrainConfig};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

fn config(extra: &[&str]) -> TrainConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiny.toml"
    ))
    .unwrap();
    let mut c = TrainConfig::from_toml(&text).unwrap();
    for s in [
        "train.checkpoint_every=100",
        "train.keep_checkpoints=5",
        "data.batch_size=16",
    ]
    .iter()
    .chain(extra)
    {
        c.set(s).unwrap();
    }
    c
}

/// The losses of a run and its seconds per step.
fn losses(cfg: &TrainConfig, out: &Path) -> (Vec<f32>, f64) {
    let never = AtomicBool::new(false);
    let mut l = Vec::new();
    let t = std::time::Instant::now();
    let o = train(cfg, out, false, &Device::Cpu, &never, &mut |r| {
        l.push(r.loss)
    })
    .unwrap();
    (l, t.elapsed().as_secs_f64() / o.steps as f64)
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn bf16_loss_falls_like_f32() {
    let dir = tempfile::tempdir().unwrap();
    let steps = "train.max_steps=20";
    let (f32_l, f32_s) = losses(&config(&[steps]), &dir.path().join("f32"));
    let (bf_l, bf_s) = losses(
        &config(&[steps, r#"train.mixed_precision="bf16""#]),
        &dir.path().join("bf16"),
    );
    let (first, last) = (mean(&bf_l[..5]), mean(&bf_l[15..]));
    eprintln!(
        "bf16: loss {first:.4} → {last:.4}, {bf_s:.3} s/step; f32: {:.4} → {:.4}, {f32_s:.3} s/step",
        mean(&f32_l[..5]),
        mean(&f32_l[15..])
    );
    assert!(bf_l.iter().all(|l| l.is_finite()));
    assert!(
        last < 0.7 * first,
        "bf16 loss did not fall: {first} → {last}"
    );
    // Same data, noise and init: the curves stay close (bf16 rounding only).
    assert!((last - mean(&f32_l[15..])).abs() < 0.25 * mean(&f32_l[15..]));
}

/// dtype of every tensor of a safetensors file.
fn dtypes(path: &Path) -> Vec<DType> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .values()
        .map(|t| t.dtype())
        .collect()
}

#[test]
fn bf16_checkpoints_stay_f32_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg = config(&[
        "train.max_steps=4",
        "train.checkpoint_every=2",
        r#"train.mixed_precision="bf16""#,
    ]);
    let never = AtomicBool::new(false);
    train(&cfg, &a, false, &Device::Cpu, &never, &mut |_| {}).unwrap();
    let stop = AtomicBool::new(false);
    let part = train(&cfg, &b, false, &Device::Cpu, &stop, &mut |r| {
        if r.step == 3 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(part.steps, 3);
    train(&cfg, &b, true, &Device::Cpu, &never, &mut |_| {}).unwrap();
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "unet_ema/diffusion_pytorch_model.safetensors",
        "checkpoints/step-4/optimizer.safetensors",
    ] {
        assert!(dtypes(&a.join(f)).iter().all(|d| *d == DType::F32), "{f}");
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs after a bf16 resume"
        );
    }
}

#[test]
fn fp16_scales_the_loss_and_resumes_with_its_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg = config(&[
        "train.max_steps=3",
        "train.checkpoint_every=1",
        r#"train.mixed_precision="fp16""#,
    ]);
    let never = AtomicBool::new(false);
    let mut scales = Vec::new();
    train(&cfg, &a, false, &Device::Cpu, &never, &mut |r| {
        assert!(r.loss.is_finite());
        scales.extend(
            r.metrics
                .iter()
                .filter(|(k, _)| k == "loss_scale")
                .map(|(_, v)| *v),
        );
    })
    .unwrap();
    eprintln!("fp16 loss scales: {scales:?}");
    assert_eq!(scales.len(), 3, "every step reports its loss scale");
    assert!(
        scales.iter().all(|s| *s >= 1.0 && *s <= 65536.0),
        "{scales:?}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.join("checkpoints/step-2/training_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["grad_scaler"]["scale"].as_f64(), Some(scales[1]));
    let stop = AtomicBool::new(false);
    train(&cfg, &b, false, &Device::Cpu, &stop, &mut |r| {
        if r.step == 2 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    train(&cfg, &b, true, &Device::Cpu, &never, &mut |_| {}).unwrap();
    let f = "unet/diffusion_pytorch_model.safetensors";
    assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap());
}

#[test]
fn bad_values_are_refused() {
    // A bad enum value is refused where the config is parsed.
    let e = config(&[])
        .set(r#"train.mixed_precision="fp8""#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.mixed_precision") && e.contains("no, bf16, fp16"),
        "{e}"
    );
}

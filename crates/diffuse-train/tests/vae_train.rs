//! VAE training through the one trainer (`[vae]`): a tiny AutoencoderKL on MNIST at 16×16 —
//! losses and held-out PSNR/SSIM reported, reconstruction grids written, the output loads as a
//! diffusers AutoencoderKL, and a stopped-and-resumed run ends bit-identical.

use candle_core::Device;
use diffuse_train::trainer::{train, TrainConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

fn config(extra: &[&str]) -> TrainConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/vae-mnist.toml"
    ))
    .unwrap();
    let mut c = TrainConfig::from_toml(&text).unwrap();
    for s in [
        "model.block_out_channels=[8, 16]",
        r#"model.down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"]"#,
        r#"model.up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"]"#,
        "model.norm_num_groups=4",
        "model.latent_channels=2",
        "data.size=16",
        "data.batch_size=8",
        "train.max_steps=8",
        "train.learning_rate=3e-3",
        "train.lr_warmup_steps=0",
        "train.checkpoint_every=4",
        "train.sample_every=4",
        "train.keep_checkpoints=3",
        "vae.eval_images=16",
        "vae.kl_weight=1e-3",
        "vae.kl_warmup_steps=4",
    ]
    .iter()
    .chain(extra)
    {
        c.set(s).unwrap();
    }
    c
}

type Reports = Vec<(u64, f32, HashMap<String, f64>)>;

fn run(cfg: &TrainConfig, out: &std::path::Path, resume: bool, stop_at: Option<u64>) -> Reports {
    let stop = AtomicBool::new(false);
    let mut reports = Vec::new();
    train(cfg, out, resume, &Device::Cpu, &stop, &mut |r| {
        reports.push((r.step, r.loss, r.metrics.iter().cloned().collect()));
        if Some(r.step) == stop_at {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    reports
}

#[test]
fn vae_trains_evaluates_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg = config(&[]);
    let full = run(&cfg, &a, false, None);
    assert_eq!(full.len(), 8);
    // β warms up linearly over 4 steps; loss = reconstruction + β·KL.
    for (step, loss, m) in &full {
        let beta = 1e-3 * (*step as f64 / 4.0).min(1.0);
        assert!((m["kl_weight"] - beta).abs() < 1e-12, "step {step}");
        let want = m["reconstruction"] + beta * m["kl"];
        assert!((*loss as f64 - want).abs() < 1e-4 * want, "step {step}");
    }
    let rec = |i: usize| full[i].2["reconstruction"];
    assert!(
        rec(6) + rec(7) < rec(0) + rec(1),
        "the reconstruction loss falls"
    );
    // Held-out PSNR and SSIM with every grid (steps 4 and 8).
    let psnr: Vec<f64> = full
        .iter()
        .filter_map(|(_, _, m)| m.get("eval/psnr").copied())
        .collect();
    assert_eq!(psnr.len(), 2);
    assert!(psnr.iter().all(|p| p.is_finite() && *p > 0.0), "{psnr:?}");
    let ssim: Vec<f64> = full
        .iter()
        .filter_map(|(_, _, m)| m.get("eval/ssim").copied())
        .collect();
    assert_eq!(ssim.len(), 2);
    assert!(ssim.iter().all(|s| *s > -1.0 && *s <= 1.0), "{ssim:?}");
    for f in ["samples/step-4.png", "samples/step-8.png"] {
        let img = image::open(a.join(f)).unwrap();
        // 8 held-out images over their 8 reconstructions, 16 px each, 2 px gaps.
        assert_eq!((img.width(), img.height()), (8 * 16 + 7 * 2, 2 * 16 + 2));
    }
    // The output: diffusers AutoencoderKL folders (no pipeline index).
    let (vae, _) = diffuse_models::weights::load_vae(&a.join("vae_ema"), &Device::Cpu).unwrap();
    assert_eq!(vae.config().latent_channels, 2);
    assert!(a.join("vae/config.json").exists() && !a.join("model_index.json").exists());

    // Stopped after step 2 (Ctrl-C), resumed: the same weights, bit for bit.
    let first = run(&cfg, &b, false, Some(2));
    assert_eq!(first.len(), 2);
    let rest = run(&cfg, &b, true, None);
    assert_eq!(rest.first().map(|r| r.0), Some(3));
    for f in [
        "vae/diffusion_pytorch_model.safetensors",
        "vae_ema/diffusion_pytorch_model.safetensors",
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
}

#[test]
fn bad_vae_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let err = |cfg: TrainConfig| match train(
        &cfg,
        dir.path(),
        false,
        &Device::Cpu,
        &never,
        &mut |_| {},
    ) {
        Ok(_) => panic!("trained"),
        Err(e) => e.to_string(),
    };
    let e = err(config(&[r#"vae.loss="l3""#]));
    assert!(e.contains("vae.loss") && e.contains("l3"), "{e}");
    let e = err(config(&["model.norm_num_groups=3"]));
    assert!(e.contains("norm_num_groups"), "{e}");
}

//! Latent diffusion through the one trainer. `[vae]`: a tiny AutoencoderKL on MNIST at 16×16 —
//! losses and held-out PSNR/SSIM reported, reconstruction grids written, the output loads as a
//! diffusers AutoencoderKL, and a stopped-and-resumed run ends bit-identical. `data.latents`: a
//! UNet trained on a latent cache becomes a latent pipeline, and resumes bit-identically too.

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
    // A bad enum value is refused where the config is parsed.
    let e = config(&[]).set(r#"vae.loss="l3""#).unwrap_err().to_string();
    assert!(e.contains("vae.loss") && e.contains("l3"), "{e}");
    let e = err(config(&["model.norm_num_groups=3"]));
    assert!(e.contains("norm_num_groups"), "{e}");
}

/// A latent cache of 48 MNIST digits (16×16) encoded by the `vae_gray_plain` fixture.
fn latent_cache(dir: &std::path::Path) {
    use diffuse_data::transform::{Fit, Transform};
    use diffuse_models::latent_cache::{encode_dataset, EncodeOptions};
    let vae = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/vae_gray_plain");
    let ds = diffuse_data::datasets::open("mnist", diffuse_data::datasets::Split::Train).unwrap();
    let opts = EncodeOptions {
        batch_size: 16,
        shard_size: 100,
        limit: Some(48),
        transform: Transform {
            size: 16,
            fit: Fit::Resize,
            hflip: false,
        },
    };
    encode_dataset(&vae, &*ds, &opts, dir, &Device::Cpu, &mut |_, _| {}).unwrap();
}

#[test]
fn latent_diffusion_trains_into_a_latent_pipeline_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("latents");
    latent_cache(&cache);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiny.toml"
    ))
    .unwrap();
    let mut cfg = TrainConfig::from_toml(&text).unwrap();
    for s in [
        r#"data.name="""#.to_string(),
        format!("data.latents={:?}", cache.to_str().unwrap()),
        "data.batch_size=8".into(),
        "train.max_steps=6".into(),
        "train.checkpoint_every=3".into(),
        "train.sample_every=3".into(),
        "train.sample_steps=2".into(),
        "train.keep_checkpoints=3".into(),
    ] {
        cfg.set(&s).unwrap();
    }
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let full = run(&cfg, &a, false, None);
    assert_eq!(full.len(), 6);
    assert!(full.iter().all(|r| r.1.is_finite()));
    // The output is a latent pipeline: UNet over the VAE's 2-channel 4×4 latents, the VAE beside.
    let folder = diffuse_models::weights::resolve_model_folder(&a).unwrap();
    assert_eq!(
        folder.pipeline_class.as_deref(),
        Some(diffuse_models::weights::LATENT_PIPELINE_CLASS)
    );
    let (unet, _) =
        diffuse_models::weights::load_unet(folder.ema_net_dir.as_ref().unwrap(), &Device::Cpu)
            .unwrap();
    let (vae, _) =
        diffuse_models::weights::load_vae(folder.vae_dir.as_ref().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(unet.config().in_channels, 2);
    assert_eq!(unet.config().sample_hw(), Some((4, 4)));
    let cached = diffuse_models::weights::read_vae_config(&cache.join("vae")).unwrap();
    assert_eq!(vae.config().scaling_factor, cached.scaling_factor);
    // Sample grids are decoded images: 10 classes × 8, 16 px each, 2 px gaps.
    let img = image::open(a.join("samples/step-6.png")).unwrap();
    assert_eq!(img.width(), 8 * 16 + 7 * 2);
    assert_eq!(img.height(), 10 * 16 + 9 * 2);

    // Stopped after step 2, resumed: bit-identical (ε of the latent samples is checkpointed).
    run(&cfg, &b, false, Some(2));
    run(&cfg, &b, true, None);
    let f = "unet/diffusion_pytorch_model.safetensors";
    assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap());

    // A VAE cannot train on latents; a config needs one data source.
    let never = AtomicBool::new(false);
    let mut bad = cfg.clone();
    bad.set(r#"data.name="mnist""#).unwrap();
    let e = train(
        &bad,
        &dir.path().join("c"),
        false,
        &Device::Cpu,
        &never,
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("exactly one of `name`"), "{e}");
}

/// `[model] type = "dit"` on a latent cache: the output is diffusers' own DiTPipeline
/// (`transformer/` over the VAE's latents, `vae/` beside), sample grids are decoded images.
#[test]
fn a_dit_trains_on_latents_into_a_dit_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("latents");
    latent_cache(&cache);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/dit-mnist.toml"
    ))
    .unwrap();
    let mut cfg = TrainConfig::from_toml(&text).unwrap();
    for s in [
        r#"data.name="""#.to_string(),
        format!("data.latents={:?}", cache.to_str().unwrap()),
        "data.batch_size=8".into(),
        "model.num_layers=1".into(),
        "model.num_attention_heads=2".into(),
        "model.attention_head_dim=8".into(),
        "train.max_steps=2".into(),
        "train.checkpoint_every=2".into(),
        "train.sample_every=2".into(),
        "train.sample_steps=2".into(),
    ] {
        cfg.set(&s).unwrap();
    }
    let out = dir.path().join("dit");
    let reports = run(&cfg, &out, false, None);
    assert!(reports.iter().all(|r| r.1.is_finite()));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model_index.json")).unwrap())
            .unwrap();
    assert_eq!(index["_class_name"], "DiTPipeline");
    assert_eq!(
        index["vae"],
        serde_json::json!(["diffusers", "AutoencoderKL"])
    );
    let folder = diffuse_models::weights::resolve_model_folder(&out).unwrap();
    assert!(folder
        .ema_net_dir
        .as_ref()
        .unwrap()
        .ends_with("transformer_ema"));
    assert!(folder.vae_dir.is_some());
    let (net, _) = diffuse_models::weights::load_net(&folder.net_dir, &Device::Cpu).unwrap();
    assert_eq!(net.component(), "transformer");
    assert_eq!((net.in_channels(), net.sample_hw()), (2, Some((4, 4))));
    assert_eq!(net.num_classes(), Some(11));
    let img = image::open(out.join("samples/step-2.png")).unwrap();
    assert_eq!(img.width(), 8 * 16 + 7 * 2, "decoded 16 px images");
}

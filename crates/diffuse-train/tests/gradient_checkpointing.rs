//! `train.gradient_checkpointing`: the same run with and without it gives the same loss curve,
//! gradient norms and weights — a class-conditional UNet with attention (also with gradient
//! accumulation), a DiT and a VAE — and the key is checked like every other.

use candle_core::{Device, Tensor};
use diffuse_train::trainer::{train, TrainConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn config(file: &str, sets: &[&str]) -> TrainConfig {
    let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut c = TrainConfig::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    for s in [
        "train.max_steps=4",
        "train.checkpoint_every=0",
        "train.sample_every=0",
        "data.workers=1",
    ]
    .iter()
    .chain(sets)
    {
        c.set(s).unwrap();
    }
    c
}

/// (loss, gradient norm) per step and the final weights of `component`.
fn run(
    cfg: &TrainConfig,
    out: &Path,
    component: &str,
) -> (Vec<(f32, f64)>, HashMap<String, Tensor>) {
    let mut curve = Vec::new();
    let never = AtomicBool::new(false);
    train(cfg, out, false, &Device::Cpu, &never, &mut |r| {
        curve.push((r.loss, r.grad_norm))
    })
    .unwrap();
    let weights = candle_core::safetensors::load(
        out.join(component)
            .join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    (curve, weights)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(1e-12)
}

/// Trains `file` + `sets` twice, the second time with gradient checkpointing, and compares.
fn same_run(what: &str, file: &str, sets: &[&str], component: &str) {
    let dir = tempfile::tempdir().unwrap();
    let plain = config(file, sets);
    assert!(!plain.train.gradient_checkpointing, "off by default");
    let mut ck = plain.clone();
    ck.set("train.gradient_checkpointing=true").unwrap();
    let (c1, w1) = run(&plain, &dir.path().join("plain"), component);
    let (c2, w2) = run(&ck, &dir.path().join("ckpt"), component);
    assert_eq!(c1.len(), c2.len());
    let (mut worst_loss, mut worst_norm, mut worst_w) = (0f64, 0f64, 0f64);
    for (i, ((l1, n1), (l2, n2))) in c1.iter().zip(&c2).enumerate() {
        let (rl, rn) = (rel(*l1 as f64, *l2 as f64), rel(*n1, *n2));
        assert!(rl < 1e-5, "{what}: step {}: loss {l1} vs {l2}", i + 1);
        assert!(rn < 1e-5, "{what}: step {}: grad norm {n1} vs {n2}", i + 1);
        (worst_loss, worst_norm) = (worst_loss.max(rl), worst_norm.max(rn));
    }
    assert_eq!(w1.len(), w2.len());
    let mut worst_key_bias = 0f64;
    for (name, a) in &w1 {
        let b = &w2[name];
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let m: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let r = d as f64 / (m as f64).max(1e-12);
        // Attention's key bias has a zero gradient in exact arithmetic (softmax ignores a
        // per-query constant): its ~1e-12 rounding noise differs between the runs, and AdamW
        // turns noise into steps of up to the learning rate.
        if name.ends_with("to_k.bias") {
            assert!(r < 1e-4, "{what}: weight {name}: relative difference {r}");
            worst_key_bias = worst_key_bias.max(r);
        } else {
            assert!(r < 1e-5, "{what}: weight {name}: relative difference {r}");
            worst_w = worst_w.max(r);
        }
    }
    println!(
        "{what}: {} steps, losses {:?}; worst relative difference: loss {worst_loss:.2e}, grad norm {worst_norm:.2e}, weights {worst_w:.2e} (attention key biases {worst_key_bias:.2e})",
        c1.len(),
        c1.iter().map(|c| c.0).collect::<Vec<_>>()
    );
}

#[test]
fn unet_trains_the_same_with_checkpointing() {
    same_run("unet", "tiny.toml", &["data.batch_size=8"], "unet");
    same_run(
        "unet, 2 micro-batches",
        "tiny.toml",
        &["data.batch_size=4", "train.gradient_accumulation_steps=2"],
        "unet",
    );
}

#[test]
fn dit_and_vae_train_the_same_with_checkpointing() {
    same_run(
        "dit",
        "dit-mnist.toml",
        &[
            "data.batch_size=8",
            "model.num_layers=2",
            "model.num_attention_heads=2",
            "model.attention_head_dim=16",
            "train.learning_rate=1e-3",
        ],
        "transformer",
    );
    same_run(
        "vae",
        "vae-mnist.toml",
        &[
            "data.batch_size=4",
            "data.size=16",
            "model.block_out_channels=[16, 32]",
            "model.down_block_types=[\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"]",
            "model.up_block_types=[\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]",
            "model.norm_num_groups=8",
            "vae.eval_images=0",
        ],
        "vae",
    );
}

#[test]
fn the_key_is_validated_and_absent_when_off() {
    let base = std::fs::read_to_string(format!(
        "{}/../../examples/tiny.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let on = TrainConfig::from_toml(
        &base.replace("[train]\n", "[train]\ngradient_checkpointing = true\n"),
    )
    .unwrap();
    assert!(on.train.gradient_checkpointing);
    let typo =
        TrainConfig::from_toml(&base.replace("[train]\n", "[train]\ngradient_checkpoint = true\n"));
    let err = typo.expect_err("unknown keys must still error").to_string();
    assert!(err.contains("gradient_checkpoint"), "{err}");
    let off = TrainConfig::from_toml(&base).unwrap();
    let json = serde_json::to_string(&off).unwrap();
    assert!(!json.contains("gradient_checkpointing"), "{json}");
    assert!(serde_json::to_string(&on)
        .unwrap()
        .contains("\"gradient_checkpointing\":true"));
}

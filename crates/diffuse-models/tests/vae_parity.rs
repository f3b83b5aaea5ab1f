//! AutoencoderKL parity with diffusers 0.42.1 (fixtures of `tools/fixtures/gen_vae.py`): three
//! random-weight VAEs (mid attention on/off, quant convs on/off, 1 to 3 levels, odd input size);
//! encode (mean, clamped logvar, KL, a posterior sample from recorded noise), decode, forward;
//! save/load round trip; one-line errors.

use candle_core::{DType, Device, Tensor};
use diffuse_core::rng::ReplayNoise;
use diffuse_models::weights::{self, load_vae, read_vae_config, save_vae};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::rel_err;

const NAMES: [&str; 3] = ["rgb_attn", "gray_plain", "single_level"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/vae_{name}"))
}

fn io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("io.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn vae_outputs_match_diffusers() {
    for name in NAMES {
        let (vae, _) = load_vae(&fixture(name), &Device::Cpu).unwrap();
        let io = io(name);
        let post = vae.encode(&io["sample"]).unwrap();
        let mut noise = ReplayNoise::new([io["noise"].clone()]);
        let got = [
            ("mean", post.mean.clone()),
            ("logvar", post.logvar.clone()),
            ("kl", post.kl().unwrap()),
            ("posterior_sample", post.sample(&mut noise).unwrap()),
            ("decoded", vae.decode(&io["latents"]).unwrap()),
            ("forward", vae.forward(&io["sample"], None).unwrap()),
        ];
        for (key, t) in got {
            let e = rel_err(&t, &io[key]);
            eprintln!("vae_{name} {key}: max relative error {e:e}");
            assert!(e <= 1e-4, "vae_{name} {key}: relative error {e:e}");
        }
        // Slicing changes memory, not values.
        let sliced = vae.decode_sliced(&io["latents"], 1).unwrap();
        assert!(rel_err(&sliced, &io["decoded"]) <= 1e-4);
    }
}

#[test]
fn save_then_load_round_trips() {
    let src = fixture("gray_plain");
    let (vae, varmap) = load_vae(&src, &Device::Cpu).unwrap();
    let config = read_vae_config(&src).unwrap();
    assert_eq!(config.shift_factor, Some(0.1159));
    assert!(!config.use_quant_conv && !config.mid_block_add_attention);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vae");
    save_vae(&config, &varmap, &dir, DType::F32).unwrap();
    let (again, _) = load_vae(&dir, &Device::Cpu).unwrap();
    let io = io("gray_plain");
    let a = vae.forward(&io["sample"], None).unwrap();
    let b = again.forward(&io["sample"], None).unwrap();
    assert_eq!(rel_err(&a, &b), 0.0, "f32 save/load is exact");
    let names = |d: &Path| {
        let mut k: Vec<String> =
            candle_core::safetensors::load(d.join(weights::WEIGHTS_NAME), &Device::Cpu)
                .unwrap()
                .into_keys()
                .collect();
        k.sort();
        k
    };
    assert_eq!(names(&dir), names(&src), "exactly diffusers' tensor names");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["_class_name"], "AutoencoderKL");
    assert_eq!(saved["scaling_factor"], 0.3611);
    // f16 on disk loads upcast.
    let half = tmp.path().join("f16");
    save_vae(&config, &varmap, &half, DType::F16).unwrap();
    let (h, _) = load_vae(&half, &Device::Cpu).unwrap();
    assert!(rel_err(&h.forward(&io["sample"], None).unwrap(), &io["forward"]) <= 2e-2);
}

#[test]
fn broken_vae_folders_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |dir: &Path| {
        let e = match load_vae(dir, &Device::Cpu) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        };
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    // A UNet folder is not a VAE.
    let unet = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet_basic");
    let e = err(&unet);
    assert!(
        e.contains("_class_name") && e.contains("UNet2DModel"),
        "{e}"
    );
    // Weights of another VAE shape.
    let dir = tmp.path().join("mixed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("rgb_attn").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("single_level").join(weights::WEIGHTS_NAME),
        dir.join(weights::WEIGHTS_NAME),
    )
    .unwrap();
    let e = err(&dir);
    assert!(
        e.contains("decoder.conv_in.bias") && e.contains("the model expects [32]"),
        "{e}"
    );
}

#[test]
fn latent_ddim_loop_and_decode_match_diffusers() {
    use diffuse_core::config::SchedulerConfig;
    use diffuse_core::sampler::Sampler;
    use diffuse_models::pipeline::{decode_latents, generate, GenerateOptions};
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let src = fx.join("pipeline_latent");
    let text = std::fs::read_to_string(src.join("scheduler/scheduler_config.json")).unwrap();
    let sched: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // A UNet over 3 channels cannot denoise 2-channel latents: nothing is written.
    let bad = tmp.path().join("bad");
    let vae_dir = fixture("gray_plain");
    let e = weights::write_latent_pipeline(&bad, &fx.join("unet_basic"), &vae_dir, &sched)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("latent_channels 2") && e.contains("in_channels 3"),
        "{e}"
    );
    assert!(!bad.exists());
    // The pipeline folder: unet_timestep_class denoises vae_gray_plain's latents.
    let pipe = tmp.path().join("pipe");
    let unet_dir = fx.join("unet_timestep_class");
    weights::write_latent_pipeline(&pipe, &unet_dir, &vae_dir, &sched).unwrap();
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let index = json(&pipe.join("model_index.json"));
    assert_eq!(index, json(&src.join("model_index.json")));
    let folder = weights::resolve_model_folder(&pipe).unwrap();
    assert_eq!(
        folder.pipeline_class.as_deref(),
        Some(weights::LATENT_PIPELINE_CLASS)
    );
    let dev = Device::Cpu;
    let (unet, _) = weights::load_net(&folder.net_dir, &dev).unwrap();
    let (vae, _) = load_vae(folder.vae_dir.as_ref().unwrap(), &dev).unwrap();
    let text = std::fs::read_to_string(folder.scheduler_config.unwrap()).unwrap();
    let sampler = Sampler::new(&SchedulerConfig::from_json_str(&text).unwrap(), 4).unwrap();
    let s = candle_core::safetensors::load(src.join("samples.safetensors"), &dev).unwrap();
    let opts = GenerateOptions {
        num_images: 2,
        size: (4, 4),
        class_labels: Some(vec![7]),
        initial_noise: Some(s["noise"].clone()),
        ..Default::default()
    };
    let latents = generate(&unet, &sampler, &opts, &dev, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let e = rel_err(&latents, &s["latents"]);
    eprintln!("latent DDIM 4 steps: max relative error {e:e}");
    assert!(e <= 1e-4, "latents: {e:e}");
    let images = decode_latents(&vae, &latents, 1).unwrap();
    let e = rel_err(&images, &s["images"]);
    eprintln!("latent pipeline images: max relative error {e:e}");
    assert!(e <= 1e-4, "images: {e:e}");
}

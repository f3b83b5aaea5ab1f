//! DiTTransformer2DModel parity with diffusers 0.42.1 (fixtures of `tools/fixtures/gen_dit.py`):
//! three random-weight DiTs (patch 2 and 4; learn_sigma on/off; class-conditional and
//! unconditional; tanh and exact GELU; qkv biases on/off; affine norm3), one also at twice its
//! sample size; a pixel-space DiTPipeline folder written by diffusers and a 4-step DDIM loop with
//! classifier-free guidance; save/load round trip; gradients for every parameter; one-line
//! errors.

use candle_core::{DType, Device, Tensor};
use diffuse_core::config::SchedulerConfig;
use diffuse_core::sampler::Sampler;
use diffuse_models::dit::DiTTransformer2DModel;
use diffuse_models::net::Network;
use diffuse_models::pipeline::{generate, GenerateOptions};
use diffuse_models::weights::{self, load, load_net, resolve_model_folder, save};
use diffuse_models::DiTTransformer2DConfig;
use std::path::{Path, PathBuf};

mod common;
use common::{fixtures, load_st, max_abs_err, rel_err, timesteps};

const NAMES: [&str; 3] = ["p2_sigma", "p4_uncond", "p2_rgb"];

fn fixture(name: &str) -> PathBuf {
    fixtures().join(format!("dit_{name}"))
}

fn load_dit(dir: &Path) -> DiTTransformer2DModel {
    load::<DiTTransformer2DModel>(dir, &Device::Cpu).unwrap().0
}

/// The labels diffuse passes: none for an unconditional model (the null class is implied).
fn labels_for(model: &DiTTransformer2DModel, io: &Tensor) -> Option<Tensor> {
    model.is_class_conditional().then(|| io.clone())
}

#[test]
fn dit_outputs_match_diffusers() {
    for name in NAMES {
        let dir = fixture(name);
        let model = load_dit(&dir);
        let io = load_st(&dir.join("io.safetensors"));
        let labels = labels_for(&model, &io["class_labels"]);
        let ts = timesteps(&io["timestep"]);
        let mut cases = vec![("output", io["sample"].clone())];
        if io.contains_key("sample_big") {
            cases.push(("output_big", io["sample_big"].clone()));
        }
        for (key, sample) in cases {
            let got = model.forward(&sample, &ts, labels.as_ref()).unwrap();
            let (a, e) = (max_abs_err(&got, &io[key]), rel_err(&got, &io[key]));
            eprintln!("dit_{name} {key}: max abs error {a:e}, max relative error {e:e}");
            assert!(e <= 1e-4, "dit_{name} {key}: relative error {e:e}");
        }
        // The null class given explicitly is what "no labels" means.
        let explicit = model
            .forward(&io["sample"], &ts, Some(&io["class_labels"]))
            .unwrap();
        assert!(rel_err(&explicit, &io["output"]) <= 1e-4);
    }
}

#[test]
fn learned_sigma_half_is_split_off_for_samplers() {
    let dir = fixture("p2_sigma");
    let (net, _) = load_net(&dir, &Device::Cpu).unwrap();
    assert!(matches!(net, Network::DiT(_)));
    assert_eq!((net.in_channels(), net.out_channels()), (4, 8));
    assert_eq!(net.num_classes(), Some(11), "10 classes and the null class");
    assert_eq!(net.component(), "transformer");
    let io = load_st(&dir.join("io.safetensors"));
    let ts = timesteps(&io["timestep"]);
    let full = net
        .forward(&io["sample"], &ts, Some(&io["class_labels"]))
        .unwrap();
    let pred = net
        .predict(&io["sample"], &ts, Some(&io["class_labels"]))
        .unwrap();
    assert_eq!(full.dims(), [2, 8, 8, 8]);
    assert_eq!(pred.dims(), [2, 4, 8, 8]);
    assert_eq!(max_abs_err(&pred, &full.narrow(1, 0, 4).unwrap()), 0.0);
    let (uncond, _) = load_net(&fixture("p4_uncond"), &Device::Cpu).unwrap();
    assert!(!uncond.is_class_conditional());
    assert_eq!(uncond.num_classes(), None);
}

#[test]
fn save_then_load_round_trips() {
    let src = fixture("p4_uncond");
    let (model, varmap) = load::<DiTTransformer2DModel>(&src, &Device::Cpu).unwrap();
    let config = weights::read_config::<DiTTransformer2DModel>(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dit");
    save(&config, &varmap, &dir, DType::F32).unwrap();
    let again = load_dit(&dir);
    let io = load_st(&src.join("io.safetensors"));
    let ts = timesteps(&io["timestep"]);
    let a = model.forward(&io["sample"], &ts, None).unwrap();
    let b = again.forward(&io["sample"], &ts, None).unwrap();
    assert_eq!(max_abs_err(&a, &b), 0.0, "f32 save/load is exact");
    let names = |d: &Path| {
        let mut k: Vec<String> = load_st(&d.join(weights::WEIGHTS_NAME))
            .into_keys()
            .collect();
        k.sort();
        k
    };
    assert_eq!(names(&dir), names(&src), "exactly diffusers' tensor names");
    assert!(names(&dir)
        .iter()
        .all(|n| !n.contains("pos_embed.pos_embed")));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let orig: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        saved, orig,
        "the config is written back as diffusers wrote it"
    );
    let half = tmp.path().join("f16");
    save(&config, &varmap, &half, DType::F16).unwrap();
    let h = load_dit(&half).forward(&io["sample"], &ts, None).unwrap();
    assert!(rel_err(&h, &io["output"]) <= 2e-2);
}

#[test]
fn loss_backward_reaches_every_parameter() {
    let dev = Device::Cpu;
    for name in ["p2_sigma", "p4_uncond"] {
        let dir = fixture(name);
        let config = weights::read_config::<DiTTransformer2DModel>(&dir).unwrap();
        // Weights as Vars (the training path), with the fixture's non-trivial values.
        let (model, varmap) = weights::build::<DiTTransformer2DModel>(&config, &dev).unwrap();
        weights::load_into(&varmap, &weights::weight_files(&dir).unwrap()).unwrap();
        let io = load_st(&dir.join("io.safetensors"));
        let labels = labels_for(&model, &io["class_labels"]);
        let out = model
            .forward(&io["sample"], &timesteps(&io["timestep"]), labels.as_ref())
            .unwrap();
        let target = Tensor::randn(0f32, 1.0, out.shape(), &dev).unwrap();
        let loss = (out - target).unwrap().sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        assert!(
            !data.contains_key("pos_embed.pos_embed"),
            "a buffer, not a weight"
        );
        for (k, v) in data.iter() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("dit_{name}: no gradient for {k}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm.is_finite(), "dit_{name}: non-finite gradient for {k}");
            if k.ends_with(".to_k.bias") {
                // q·b_k shifts every logit of a query row alike: softmax cancels it exactly.
                assert!(norm.sqrt() < 1e-5, "dit_{name}: {k} gradient {norm}");
            } else {
                assert!(norm > 0.0, "dit_{name}: zero gradient for {k}");
            }
        }
    }
}

/// Assembles the pixel-space DiTPipeline folder that diffusers wrote (its transformer is
/// dit_p2_sigma, not duplicated in the fixtures).
fn dit_pipeline(dst: &Path) {
    let src = fixtures().join("pipeline_dit");
    std::fs::create_dir_all(dst.join("scheduler")).unwrap();
    for f in ["model_index.json", "scheduler/scheduler_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    weights::copy_model_folder(&fixture("p2_sigma"), &dst.join("transformer")).unwrap();
}

#[test]
fn pixel_dit_pipeline_loads_and_samples_like_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let pipe = tmp.path().join("pipe");
    dit_pipeline(&pipe);
    let folder = resolve_model_folder(&pipe).unwrap();
    assert_eq!(folder.pipeline_class.as_deref(), Some("DiTPipeline"));
    assert!(folder.vae_dir.is_none(), "\"vae\": [null, null] is no VAE");
    assert!(folder.net_dir.ends_with("transformer"));
    // diffuse writes the same model_index.json as diffusers' DiTPipeline(vae=None).
    let (net, _) = load_net(&folder.net_dir, &Device::Cpu).unwrap();
    let written = weights::pipeline_index(&net.config(), "DDIMScheduler", false);
    let diffusers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pipe.join("model_index.json")).unwrap())
            .unwrap();
    assert_eq!(written, diffusers);

    let text = std::fs::read_to_string(folder.scheduler_config.unwrap()).unwrap();
    let sampler = Sampler::new(&SchedulerConfig::from_json_str(&text).unwrap(), 4).unwrap();
    let s = load_st(&fixtures().join("pipeline_dit/samples.safetensors"));
    assert_eq!(
        sampler.timesteps(),
        timesteps(&s["timesteps"])
            .iter()
            .map(|&t| t as f64)
            .collect::<Vec<_>>()
    );
    let labels: Vec<u32> = timesteps(&s["labels"]).iter().map(|&l| l as u32).collect();
    let opts = GenerateOptions {
        num_images: 2,
        batch_size: 1,
        size: (8, 8),
        class_labels: Some(labels),
        guidance_scale: 3.0,
        initial_noise: Some(s["noise"].clone()),
        ..Default::default()
    };
    let images = generate(&net, &sampler, &opts, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let (a, e) = (
        max_abs_err(&images, &s["images"]),
        rel_err(&images, &s["images"]),
    );
    eprintln!("pipeline_dit DDIM 4 steps + CFG 3: max abs error {a:e}, max relative error {e:e}");
    assert!(e <= 1e-4, "relative error {e:e}");
}

fn load_err(dir: &Path) -> String {
    let e = match load_net(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    e
}

#[test]
fn invalid_configs_and_inputs_give_one_line_errors() {
    let src = fixture("p2_sigma");
    let tmp = tempfile::tempdir().unwrap();
    let edited = |name: &str, from: &str, to: &str| -> PathBuf {
        let dir = tmp.path().join(name);
        weights::copy_model_folder(&src, &dir).unwrap();
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(dir.join("config.json"), text.replace(from, to)).unwrap();
        dir
    };
    let e = load_err(&edited("norm", "\"ada_norm_zero\"", "\"ada_norm_single\""));
    assert!(
        e.contains("norm_type") && e.contains("ada_norm_single"),
        "{e}"
    );
    let e = load_err(&edited("size", "\"sample_size\": 8", "\"sample_size\": 9"));
    assert!(
        e.contains("sample_size") && e.contains("not a multiple of patch_size 2"),
        "{e}"
    );
    let e = load_err(&edited("act", "\"gelu-approximate\"", "\"geglu\""));
    assert!(e.contains("activation_fn"), "{e}");
    // Weights of another width.
    let e = load_err(&edited(
        "width",
        "\"attention_head_dim\": 8",
        "\"attention_head_dim\": 4",
    ));
    assert!(e.contains("shape"), "{e}");
    let e = load_err(&edited(
        "class",
        "\"DiTTransformer2DModel\"",
        "\"PixArtTransformer2DModel\"",
    ));
    assert!(e.contains("_class_name"), "{e}");

    let model = load_dit(&src);
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
    let err = |r: diffuse_models::Result<Tensor>| r.unwrap_err().to_string();
    let l = Tensor::new(&[11u32], &dev).unwrap();
    assert!(err(model.forward(&x, &[1.0], Some(&l))).contains("class label 11 out of range"));
    let x3 = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
    assert!(err(model.forward(&x3, &[1.0], None)).contains("3 channels"));
    let odd = Tensor::zeros((1, 4, 9, 8), DType::F32, &dev).unwrap();
    assert!(err(model.forward(&odd, &[1.0], None)).contains("patch size 2"));
}

#[test]
fn loaded_models_do_not_record_the_graph() {
    let dir = fixture("p2_rgb");
    let model = load_dit(&dir);
    let io = load_st(&dir.join("io.safetensors"));
    let out = model
        .forward(
            &io["sample"],
            &timesteps(&io["timestep"]),
            Some(&io["class_labels"]),
        )
        .unwrap();
    assert!(!out.track_op(), "inference output records a backprop graph");
}

#[test]
fn default_config_is_dit_xl_2() {
    // DiT-XL/2 at 256 px (32×32 latents): 28 layers of width 1152, 16 heads.
    let c = DiTTransformer2DConfig::default();
    assert_eq!(
        (
            c.num_layers,
            c.inner_dim(),
            c.num_attention_heads,
            c.patch_size
        ),
        (28, 1152, 16, 2)
    );
}

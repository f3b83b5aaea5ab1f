//! UNet2DModel parity with diffusers 0.42.1 (fixtures of `tools/fixtures/gen_unet.py`): random
//! weights in every block type, both time embeddings, scale-shift, three kinds of class
//! conditioning; f16/bf16 weights on disk; 5-step DDIM, DPM-Solver++ and EDM (Euler,
//! DPM-Solver++) loops; save/load round trips; and one-line errors for broken files.

use candle_core::{DType, Device, Tensor};
use diffuse_core::config::SchedulerConfig;
use diffuse_core::rng::ReplayNoise;
use diffuse_core::sampler::{sample, Sampler};
use diffuse_models::denoise::NetDenoiser;
use diffuse_models::weights::{self, load_unet, resolve_model_folder, save_unet};
use std::collections::HashMap;
use std::path::Path;

mod common;
use common::{fixtures, load_st, rel_err, timesteps};

fn run_io(model_dir: &Path, io: &Path) -> (Tensor, Tensor) {
    let (model, _) = load_unet(model_dir, &Device::Cpu).unwrap();
    let io = load_st(io);
    let out = model
        .forward(
            &io["sample"],
            &timesteps(&io["timestep"]),
            io.get("class_labels"),
        )
        .unwrap();
    (out, io["output"].clone())
}

/// A 5-step loop of `sampler` from the recorded unit noise ends within `tol` (relative) of
/// diffusers' `{key}_images`.
fn loop_matches(
    sampler: &Sampler,
    den: &dyn diffuse_core::denoiser::Denoiser,
    s: &HashMap<String, Tensor>,
    key: &str,
    tol: f32,
) {
    let mut noise = ReplayNoise::default();
    let out = sample(sampler, den, &s["noise"], &mut noise, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let e = rel_err(&out, &s[&format!("{key}_images")]);
    eprintln!("{key} 5 steps: max relative error {e:e}");
    assert!(e <= tol, "{key}: relative error {e:e}");
}

#[test]
fn unet_outputs_match_diffusers() {
    let names = [
        "basic",
        "fourier_scaleshift",
        "class_cond",
        "timestep_class",
        "identity_class",
    ];
    for name in names {
        let dir = fixtures().join(format!("unet_{name}"));
        let (got, want) = run_io(&dir, &dir.join("io.safetensors"));
        let e = rel_err(&got, &want);
        eprintln!("unet_{name}: max relative error {e:e}");
        assert!(e <= 1e-4, "{name}: relative error {e:e}");
    }
    let dir = fixtures().join("unet_basic");
    let (got, want) = run_io(&dir, &dir.join("io_batch1.safetensors"));
    assert!(rel_err(&got, &want) <= 1e-4);
}

#[test]
fn half_precision_weights_load_upcast() {
    let io = fixtures().join("unet_class_cond/io.safetensors");
    for (variant, tol) in [("f16", 2e-2f32), ("bf16", 2e-2)] {
        let (got, want) = run_io(&fixtures().join(format!("unet_class_cond_{variant}")), &io);
        let e = rel_err(&got, &want);
        assert!(e <= tol, "{variant}: {e}");
    }
}

#[test]
fn five_step_ddim_and_dpmpp_match_a_diffusers_loop() {
    let folder = resolve_model_folder(&fixtures().join("pipeline_basic")).unwrap();
    assert_eq!(folder.pipeline_class.as_deref(), Some("DDPMPipeline"));
    let (model, _) = load_unet(&folder.net_dir, &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(folder.scheduler_config.unwrap()).unwrap();
    let ddim = SchedulerConfig::from_json_str(&text).unwrap();
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    map.insert("_class_name".into(), "DPMSolverMultistepScheduler".into());
    let dpm = SchedulerConfig::from_json_map(&map).unwrap();
    let s = load_st(&fixtures().join("pipeline_basic/samples.safetensors"));
    let den = NetDenoiser {
        model: &model,
        class_labels: None,
    };
    for (cfg, key) in [(ddim, "ddim"), (dpm, "dpmpp")] {
        let sampler = Sampler::new(&cfg, 5).unwrap();
        assert_eq!(
            sampler.timesteps(),
            timesteps(&s[&format!("{key}_timesteps")])
                .iter()
                .map(|&t| t as f64)
                .collect::<Vec<_>>()
        );
        loop_matches(&sampler, &den, &s, key, 1e-3);
    }
}

/// EDMEulerScheduler and EDMDPMSolverMultistepScheduler (`tools/fixtures/gen_edm.py`): their
/// `scheduler_config.json` as diffusers saves it, parsed, drives unet_basic through 5 steps from
/// the same noise (preconditioned input c_in·x at time c_noise = ¼ ln σ); the final images match
/// diffusers' loops to 1e-4 relative.
#[test]
fn five_step_edm_loops_match_diffusers() {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("edm_fixtures.json")).unwrap(),
    )
    .unwrap();
    let (model, _) = load_unet(&fixtures().join("unet_basic"), &Device::Cpu).unwrap();
    let s = load_st(&fixtures().join("edm_samples.safetensors"));
    let den = NetDenoiser {
        model: &model,
        class_labels: None,
    };
    for key in ["edm_euler", "edm_dpmpp_2m"] {
        let lp = &index["loops"][key];
        let cfg = SchedulerConfig::from_json_str(lp["scheduler_config"].as_str().unwrap()).unwrap();
        assert_eq!(cfg.class.short_name(), key);
        assert!(cfg.ignored_keys.is_empty(), "{key}: {:?}", cfg.ignored_keys);
        let n = lp["num_inference_steps"].as_u64().unwrap() as usize;
        let sampler = Sampler::new(&cfg, n).unwrap();
        // float32 timesteps (c_noise): equal up to one float32 rounding of ¼ ln σ.
        let want = timesteps(&s[&format!("{key}_timesteps")]);
        assert_eq!(sampler.timesteps().len(), want.len());
        for (&a, &b) in sampler.timesteps().iter().zip(&want) {
            assert!(
                (a - b as f64).abs() <= 1e-6 * (b.abs() as f64).max(1.0),
                "{key}: {a} vs {b}"
            );
        }
        loop_matches(&sampler, &den, &s, key, 1e-4);
    }
}

#[test]
fn legacy_attention_names_load() {
    // diffusers < 0.14 wrote query/key/value/proj_attn; rename them in a copy and load it.
    let src = fixtures().join("unet_basic");
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("old");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let renamed: HashMap<String, Tensor> = load_st(&src.join(weights::WEIGHTS_NAME))
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.contains(".proj_attn.")));
    candle_core::safetensors::save(&renamed, dst.join(weights::WEIGHTS_NAME)).unwrap();
    let (got, want) = run_io(&dst, &src.join("io.safetensors"));
    assert!(rel_err(&got, &want) <= 1e-4);
}

#[test]
fn save_then_load_round_trips() {
    let src = fixtures().join("unet_class_cond");
    let io = src.join("io.safetensors");
    let (_, varmap) = load_unet(&src, &Device::Cpu).unwrap();
    let config = weights::read_unet_config(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f32_dir = tmp.path().join("f32");
    save_unet(&config, &varmap, &f32_dir, DType::F32).unwrap();
    let (a, want) = run_io(&f32_dir, &io);
    let (b, _) = run_io(&src, &io);
    assert_eq!(rel_err(&a, &b), 0.0, "f32 save/load is exact");
    assert!(rel_err(&a, &want) <= 1e-4);
    // The saved file has exactly diffusers' tensor names.
    let saved = load_st(&f32_dir.join(weights::WEIGHTS_NAME));
    let orig = load_st(&src.join(weights::WEIGHTS_NAME));
    let mut k1: Vec<_> = saved.keys().collect();
    let mut k2: Vec<_> = orig.keys().collect();
    k1.sort();
    k2.sort();
    assert_eq!(k1, k2);
    let f16_dir = tmp.path().join("f16");
    save_unet(&config, &varmap, &f16_dir, DType::F16).unwrap();
    let (c, _) = run_io(&f16_dir, &io);
    assert!(rel_err(&c, &want) <= 2e-2);
}

fn load_err(dir: &Path) -> String {
    let e = match load_unet(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    e
}

fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", weights::WEIGHTS_NAME] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}

#[test]
fn broken_models_give_one_line_errors() {
    let src = fixtures().join("unet_basic");
    let tmp = tempfile::tempdir().unwrap();
    let w = |d: &Path| d.join(weights::WEIGHTS_NAME);

    let corrupt = tmp.path().join("corrupt");
    copy_model(&src, &corrupt);
    std::fs::write(w(&corrupt), b"this is not a safetensors file at all").unwrap();
    assert!(load_err(&corrupt).contains("not a valid safetensors"));

    let truncated = tmp.path().join("truncated");
    copy_model(&src, &truncated);
    let bytes = std::fs::read(w(&src)).unwrap();
    std::fs::write(w(&truncated), &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_err(&truncated).contains("not a valid safetensors"));

    let mut tensors = load_st(&w(&src));
    let shaped = tmp.path().join("shaped");
    copy_model(&src, &shaped);
    tensors.insert(
        "conv_in.weight".into(),
        Tensor::zeros((16, 3, 5, 5), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, w(&shaped)).unwrap();
    let e = load_err(&shaped);
    assert!(e.contains("conv_in.weight") && e.contains("shape"), "{e}");

    let missing = tmp.path().join("missing");
    copy_model(&src, &missing);
    tensors.remove("conv_in.weight");
    candle_core::safetensors::save(&tensors, w(&missing)).unwrap();
    let e = load_err(&missing);
    assert!(e.contains("missing tensor `conv_in.weight`"), "{e}");

    let badcfg = tmp.path().join("badcfg");
    copy_model(&src, &badcfg);
    let text = std::fs::read_to_string(badcfg.join("config.json"))
        .unwrap()
        .replace("\"AttnDownBlock2D\"", "\"FancyDownBlock2D\"");
    std::fs::write(badcfg.join("config.json"), text).unwrap();
    let e = load_err(&badcfg);
    assert!(
        e.contains("down_block_types") && e.contains("FancyDownBlock2D"),
        "{e}"
    );

    let e = load_err(&tmp.path().join("nowhere"));
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn loaded_models_do_not_record_the_graph() {
    // Inference outputs must not hold on to the graph (else a sampling loop keeps every
    // step's activations alive).
    let dir = fixtures().join("unet_basic");
    let (model, _) = load_unet(&dir, &Device::Cpu).unwrap();
    let io = load_st(&dir.join("io.safetensors"));
    let out = model
        .forward(&io["sample"], &timesteps(&io["timestep"]), None)
        .unwrap();
    assert!(!out.track_op(), "inference output records a backprop graph");
}

//! Reflow on a tiny random flow teacher: pairs are the teacher's ODE solutions of seeded noise,
//! an interrupted and resumed pair run writes the same bytes as an uninterrupted one, bad
//! reruns and solvers are refused, and the student trains on the pairs from the teacher's
//! weights into a pipeline that records its step count.

use candle_core::{DType, Device, Shape, Tensor};
use diffuse_core::config::SchedulerConfig;
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::Sampler;
use diffuse_data::loader::Position;
use diffuse_models::pipeline::{generate, GenerateOptions};
use diffuse_models::weights::{build_unet, model_index, save_unet, seeded_init};
use diffuse_models::UNet2DConfig;
use diffuse_train::reflow::{
    generate_pairs, load_pairs, open_teacher, student_config, PairBatches, PairOptions, Teacher,
};
use diffuse_train::trainer::train;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// A random class-conditional (3 classes + null) 1×8×8 UNet saved as a pipeline folder.
fn teacher_folder(dir: &Path, scheduler: &str) -> PathBuf {
    let cfg = UNet2DConfig::from_json_str(
        r#"{"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
            "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4,
            "num_class_embeds": 4}"#,
    )
    .unwrap();
    let (_, varmap) = build_unet(&cfg, &Device::Cpu).unwrap();
    seeded_init(&varmap, 3).unwrap();
    for part in ["unet", "unet_ema"] {
        save_unet(&cfg, &varmap, &dir.join(part), DType::F32).unwrap();
    }
    let sched: serde_json::Value = serde_json::from_str(scheduler).unwrap();
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        sched.to_string(),
    )
    .unwrap();
    let index = model_index(sched["_class_name"].as_str().unwrap(), false);
    std::fs::write(dir.join("model_index.json"), index.to_string()).unwrap();
    dir.to_path_buf()
}

const FLOW: &str = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 2.0}"#;

fn opts() -> PairOptions {
    PairOptions {
        num_pairs: 7,
        steps: 3,
        guidance_scale: 1.5,
        batch_size: 2,
        seed: 11,
        shard_size: 3,
        ..Default::default()
    }
}

fn pairs(t: &Teacher, out: &Path, o: &PairOptions) -> diffuse_train::Result<usize> {
    let never = AtomicBool::new(false);
    generate_pairs(t, out, o, &Device::Cpu, &never, &mut |_| {}).map(|i| i.count)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn pairs_are_the_teachers_ode_and_resume_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let t = open_teacher(
        &teacher_folder(&dir.path().join("teacher"), FLOW),
        false,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(t.classes, Some(3));

    let full = dir.path().join("full");
    assert_eq!(pairs(&t, &full, &opts()).unwrap(), 7);

    // Interrupted after one shard (plus a half-written next shard left behind), then resumed.
    let part = dir.path().join("part");
    let one = PairOptions {
        max_new_shards: Some(1),
        ..opts()
    };
    assert_eq!(pairs(&t, &part, &one).unwrap(), 3);
    std::fs::write(part.join("shard-00001.safetensors"), b"torn write").unwrap();
    assert_eq!(pairs(&t, &part, &opts()).unwrap(), 7);
    let (a, b) = (files(&full), files(&part));
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        [
            "index.json",
            "shard-00000.safetensors",
            "shard-00001.safetensors",
            "shard-00002.safetensors"
        ]
    );
    assert!(
        a == b,
        "an interrupted and resumed run must write the same bytes"
    );
    // A complete folder: nothing to do, nothing rewritten.
    assert_eq!(pairs(&t, &part, &opts()).unwrap(), 7);
    assert!(files(&part) == b);

    // Pair i: z from stream (seed, i), label i mod 3, x₀ = the teacher's flow_heun solution
    // (what `diffuse sample --seed 11` gives with the same labels and guidance).
    let set = load_pairs(&full, &Device::Cpu).unwrap();
    assert_eq!(set.x0.dims(), [7, 1, 8, 8]);
    assert_eq!(set.labels, Some(vec![0, 1, 2, 0, 1, 2, 0]));
    assert_eq!(set.index.spec.sampler, "FlowMatchHeunDiscreteScheduler");
    let z5 = SeededNoise::from_streams([(11, 5)])
        .randn(&Shape::from((1, 1, 8, 8)), DType::F32, &Device::Cpu)
        .unwrap();
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert_eq!(diff(&set.noise.narrow(0, 5, 1).unwrap(), &z5), 0.0);
    let solver = t.solver(None).unwrap();
    let x0 = generate(
        &t.model,
        &Sampler::new(&solver, 3).unwrap(),
        &GenerateOptions {
            num_images: 7,
            batch_size: 7,
            seed: 11,
            size: (8, 8),
            class_labels: set.labels.clone(),
            guidance_scale: 1.5,
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| std::ops::ControlFlow::Continue(()),
    )
    .unwrap();
    // The pairs were generated in other batch splits than this one batch of 7: the GEMM kernels
    // sum in another order per split, and on this machine's AVX-512 path that reaches 1.01e-5
    // after 3 guided steps (measured), so the bound is a few float32 ulps of O(1) values above it.
    assert!(diff(&x0, &set.x0) < 3e-5, "{}", diff(&x0, &set.x0));

    // Batches: a fixed permutation per epoch, resumable at a position.
    let mut b1 = PairBatches::new(set.clone(), 3, 5, Position::default()).unwrap();
    let seen: Vec<_> = (0..3).map(|_| b1.next_batch().unwrap()).collect();
    let mut b2 = PairBatches::new(set.clone(), 3, 5, Position { epoch: 0, batch: 1 }).unwrap();
    let (x, z, l) = b2.next_batch().unwrap();
    assert_eq!(diff(&x, &seen[1].0), 0.0);
    assert_eq!(diff(&z, &seen[1].1), 0.0);
    assert_eq!(l, seen[1].2);
    assert_eq!(b1.position(), Position { epoch: 1, batch: 1 });
    assert!(PairBatches::new(set, 8, 5, Position::default()).is_err());
}

#[test]
fn bad_reruns_and_solvers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = open_teacher(
        &teacher_folder(&dir.path().join("teacher"), FLOW),
        false,
        &Device::Cpu,
    )
    .unwrap();
    let out = dir.path().join("pairs");
    pairs(&t, &out, &opts()).unwrap();
    let msg = |o: PairOptions| pairs(&t, &out, &o).unwrap_err().to_string();
    let e = msg(PairOptions { steps: 4, ..opts() });
    assert!(e.contains("steps 3 (this run: 4)"), "{e}");
    let e = msg(PairOptions {
        num_pairs: 5,
        ..opts()
    });
    assert!(e.contains("already holds 7 pairs"), "{e}");
    // A different batch size only changes the speed: more pairs are made.
    assert_eq!(
        pairs(
            &t,
            &out,
            &PairOptions {
                num_pairs: 9,
                batch_size: 4,
                ..opts()
            }
        )
        .unwrap(),
        9
    );
    let e = t.solver(Some("ddim")).unwrap_err().to_string();
    assert!(
        e.contains("`ddim` cannot drive this flow matching (flow_prediction) model")
            && e.contains(
                "samplers that work: euler, heun, dpmpp_2m, unipc, flow_euler, flow_heun"
            ),
        "{e}"
    );
    // DPM-Solver++ on flow σ solves a flow teacher's ODE too.
    let dpm = t.solver(Some("dpmpp_2m")).unwrap();
    assert!(dpm.use_flow_sigmas && dpm.uses_flow_sigmas(), "{dpm:?}");
    let stochastic: serde_json::Value = serde_json::from_str(
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": true}"#,
    )
    .unwrap();
    let mut t2 = open_teacher(&dir.path().join("teacher"), false, &Device::Cpu).unwrap();
    t2.scheduler = stochastic.as_object().unwrap().clone();
    let e = t2.solver(Some("flow_euler")).unwrap_err().to_string();
    assert!(e.contains("deterministic"), "{e}");

    // An ε teacher: its own ODE with a deterministic sampler; not the flow samplers, nor
    // ancestral sampling.
    let eps = open_teacher(
        &teacher_folder(
            &dir.path().join("eps"),
            r#"{"_class_name": "DDPMScheduler", "beta_schedule": "linear"}"#,
        ),
        false,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(eps.solver(None).unwrap().class.short_name(), "dpmpp_2m");
    let e = eps.solver(Some("flow_heun")).unwrap_err().to_string();
    assert!(
        e.contains("`flow_heun` cannot drive this ε-prediction (epsilon) model"),
        "{e}"
    );
    let e = eps.solver(Some("euler_a")).unwrap_err().to_string();
    assert!(e.contains("deterministic"), "{e}");
    let eps_pairs = dir.path().join("eps_pairs");
    assert_eq!(
        pairs(
            &eps,
            &eps_pairs,
            &PairOptions {
                sampler: Some("ddim".into()),
                ..opts()
            }
        )
        .unwrap(),
        7
    );
    let cfg = student_config(&eps, &eps_pairs, None, 2).unwrap();
    assert_eq!(
        cfg.scheduler["_class_name"],
        "FlowMatchEulerDiscreteScheduler"
    );

    let e = open_teacher(&dir.path().join("nope"), false, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("teacher: ") && e.contains("not a folder"),
        "{e}"
    );
}

#[test]
fn the_student_trains_on_pairs_from_the_teachers_weights() {
    let dir = tempfile::tempdir().unwrap();
    let tdir = teacher_folder(&dir.path().join("teacher"), FLOW);
    let t = open_teacher(&tdir, false, &Device::Cpu).unwrap();
    let out = dir.path().join("student");
    let pairs_dir = out.join("pairs");
    pairs(&t, &pairs_dir, &opts()).unwrap();

    let user = "[data]\nbatch_size = 3\n[train]\nmax_steps = 3\nlearning_rate = 1e-3\ncheckpoint_every = 2\n";
    let cfg = student_config(&t, &pairs_dir, Some(user), 2).unwrap();
    assert_eq!(cfg.train.init_from.as_deref(), tdir.to_str());
    assert_eq!(cfg.data.pairs.as_deref(), pairs_dir.to_str());
    assert_eq!(cfg.train.sample_steps, 2);
    assert_eq!(
        cfg.train.flow_sigma_sampling,
        diffuse_train::objective::SigmaSamplingKind::Uniform
    );
    assert_eq!(cfg.scheduler["num_inference_steps"], 2);
    assert_eq!(cfg.scheduler["shift"], 2.0);
    // Pairs from the teacher's unet/ (no_ema): the student starts from those weights.
    let raw = open_teacher(&tdir, true, &Device::Cpu).unwrap();
    let c = student_config(&raw, &pairs_dir, None, 2).unwrap();
    assert_eq!(
        c.train.init_from,
        Some(tdir.join("unet").display().to_string())
    );
    // It survives the round trip through train.toml (for `diffuse train --resume`).
    let text = toml::to_string(&cfg).unwrap();
    diffuse_train::trainer::TrainConfig::from_toml(&text).unwrap();

    // Zero steps of learning rate: the student is the teacher.
    let mut frozen = cfg.clone();
    frozen.set("train.learning_rate=0.0").unwrap();
    frozen.set("train.max_steps=1").unwrap();
    let never = AtomicBool::new(false);
    let f = dir.path().join("frozen");
    train(&frozen, &f, false, &Device::Cpu, &never, &mut |_| {}).unwrap();
    let w = "unet/diffusion_pytorch_model.safetensors";
    let load = |p: PathBuf| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let (a, b) = (
        load(f.join(w)),
        load(tdir.join("unet_ema").join(w.replace("unet/", ""))),
    );
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        let d = (v - &b[k]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
    }

    let mut losses = vec![];
    let o = train(&cfg, &out, false, &Device::Cpu, &never, &mut |r| {
        losses.push(r.loss)
    })
    .unwrap();
    assert_eq!(o.steps, 3);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let sched = std::fs::read_to_string(out.join("scheduler/scheduler_config.json")).unwrap();
    let sched = SchedulerConfig::from_json_str(&sched).unwrap();
    assert_eq!(sched.num_inference_steps, Some(2));
    assert!(sched.class.is_flow() && sched.shift == 2.0);
    assert!(out
        .join("unet_ema/diffusion_pytorch_model.safetensors")
        .exists());
    // The student is a teacher in turn (3-rectified flow).
    let s = open_teacher(&out, false, &Device::Cpu).unwrap();
    assert_eq!(s.classes, Some(3));

    // The example recipe is a valid student config.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/reflow-mnist.toml"
    ))
    .unwrap();
    let ex = student_config(&t, &pairs_dir, Some(&example), 2).unwrap();
    assert_eq!(ex.scheduler["num_inference_steps"], 2);
    assert_eq!((ex.train.sample_steps, ex.train.sample_guidance), (2, 1.0));
    assert!(ex.eval.is_some() && ex.train.init_from.is_some());

    // Bad configs: a data source of its own, another objective, pairs the student cannot take.
    let e = student_config(&t, &pairs_dir, Some("[data]\nname = \"mnist\"\n"), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.name"), "{e}");
    let e = student_config(
        &t,
        &pairs_dir,
        Some("[train]\nprediction_type = \"epsilon\"\n"),
        2,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("flow-matching"), "{e}");
    let mut rgb = cfg.clone();
    rgb.set("model.in_channels=3").unwrap();
    let e = train(
        &rgb,
        &dir.path().join("rgb"),
        false,
        &Device::Cpu,
        &never,
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("data.pairs") && e.contains("[1, 8, 8]") && e.contains("in_channels = 3"),
        "{e}"
    );
}

/// A latent flow teacher (UNet over the `vae_gray_plain` fixture's latents): latent pairs with
/// a copy of the VAE, and the student becomes a latent pipeline.
#[test]
fn a_latent_teacher_gives_a_latent_student() {
    let dir = tempfile::tempdir().unwrap();
    let unet = teacher_folder(&dir.path().join("unet_src"), FLOW);
    // The same tiny UNet with the VAE's 2 latent channels at 4×4 (images 16×16).
    let cfg = UNet2DConfig::from_json_str(
        r#"{"sample_size": 4, "in_channels": 2, "out_channels": 2, "block_out_channels": [8, 16],
            "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4}"#,
    )
    .unwrap();
    let (_, varmap) = build_unet(&cfg, &Device::Cpu).unwrap();
    seeded_init(&varmap, 4).unwrap();
    save_unet(&cfg, &varmap, &unet.join("latent_unet"), DType::F32).unwrap();
    let vae = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/vae_gray_plain");
    let tdir = dir.path().join("teacher");
    let sched: serde_json::Value = serde_json::from_str(FLOW).unwrap();
    diffuse_models::weights::write_latent_pipeline(
        &tdir,
        &unet.join("latent_unet"),
        &vae,
        sched.as_object().unwrap(),
    )
    .unwrap();
    let t = open_teacher(&tdir, false, &Device::Cpu).unwrap();
    assert_eq!((t.shape, t.classes), ([2, 4, 4], None));
    let out = dir.path().join("student");
    let o = PairOptions {
        guidance_scale: 1.0,
        sampler: Some("flow_euler".into()),
        ..opts()
    };
    pairs(&t, &out.join("pairs"), &o).unwrap();
    let set = load_pairs(&out.join("pairs"), &Device::Cpu).unwrap();
    assert!(set.index.spec.latent && set.vae_dir.is_some() && set.labels.is_none());
    let user = "[data]\nbatch_size = 3\n[train]\nmax_steps = 1\n";
    let cfg = student_config(&t, &out.join("pairs"), Some(user), 1).unwrap();
    let never = AtomicBool::new(false);
    train(&cfg, &out, false, &Device::Cpu, &never, &mut |_| {}).unwrap();
    let index = std::fs::read_to_string(out.join("model_index.json")).unwrap();
    assert!(index.contains("DiffuseLatentPipeline"), "{index}");
    assert!(out.join("vae/config.json").exists());
    let s = open_teacher(&out, false, &Device::Cpu).unwrap();
    assert!(s.vae.is_some());
}

/// A DiT flow teacher (the unconditional `dit_p4_uncond` fixture's weights in a pipeline with a
/// FlowMatch scheduler): its student is a DiT pipeline again.
#[test]
fn a_dit_teacher_gives_a_dit_student() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/dit_p4_uncond");
    let tdir = dir.path().join("teacher");
    std::fs::create_dir_all(tdir.join("transformer")).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), tdir.join("transformer").join(f)).unwrap();
    }
    std::fs::create_dir_all(tdir.join("scheduler")).unwrap();
    std::fs::write(tdir.join("scheduler/scheduler_config.json"), FLOW).unwrap();
    let net =
        diffuse_models::weights::read_config::<diffuse_models::Network>(&tdir.join("transformer"))
            .unwrap();
    let index =
        diffuse_models::weights::pipeline_index(&net, "FlowMatchEulerDiscreteScheduler", false);
    std::fs::write(tdir.join("model_index.json"), index.to_string()).unwrap();
    let t = open_teacher(&tdir, false, &Device::Cpu).unwrap();
    assert_eq!((t.shape, t.classes), ([1, 16, 16], None));
    let out = dir.path().join("student");
    let o = PairOptions {
        guidance_scale: 1.0,
        num_pairs: 3,
        ..opts()
    };
    pairs(&t, &out.join("pairs"), &o).unwrap();
    let user = "[data]\nbatch_size = 3\n[train]\nmax_steps = 1\n";
    let cfg = student_config(&t, &out.join("pairs"), Some(user), 1).unwrap();
    let never = AtomicBool::new(false);
    train(&cfg, &out, false, &Device::Cpu, &never, &mut |_| {}).unwrap();
    assert!(out
        .join("transformer_ema/diffusion_pytorch_model.safetensors")
        .exists());
    let s = open_teacher(&out, false, &Device::Cpu).unwrap();
    assert_eq!(s.shape, [1, 16, 16]);
    assert_eq!(s.scheduler_config.num_inference_steps, Some(1));
}

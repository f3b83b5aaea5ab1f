//! Exact resume: a run stopped at step 4 and resumed ends bit-identical to an uninterrupted
//! one (weights, EMA weights), and the output is a diffusers pipeline folder.

use candle_core::Device;
use diffuse_train::trainer::{newest_checkpoint, train, TrainConfig, TrainOutcome};
use std::sync::atomic::{AtomicBool, Ordering};

fn config() -> TrainConfig {
    config_with(&[])
}

fn config_with(extra: &[&str]) -> TrainConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiny.toml"
    ))
    .unwrap();
    let mut c = TrainConfig::from_toml(&text).unwrap();
    for s in [
        "train.max_steps=6",
        "train.checkpoint_every=3",
        "data.batch_size=8",
        "train.keep_checkpoints=5",
    ] {
        c.set(s).unwrap();
    }
    for s in extra {
        c.set(s).unwrap();
    }
    c
}

/// The time-budget test plans from the machine's pace, which the other tests of this file
/// would slow down unevenly (its plan then fell to ~115 steps, too few for its last re-plan):
/// it takes the machine alone, the others share it among themselves.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// Trains `cfg` into `dir` and stops after step `step`, as Ctrl-C does.
fn train_stopped_after(cfg: &TrainConfig, dir: &std::path::Path, step: u64) -> TrainOutcome {
    let stop = AtomicBool::new(false);
    train(cfg, dir, false, &Device::Cpu, &stop, &mut |r| {
        if r.step == step {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap()
}

#[test]
fn gradient_accumulation_runs_and_resumes_exactly() {
    let _machine = shared();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg = config_with(&["train.gradient_accumulation_steps=2", "data.batch_size=4"]);
    let never = AtomicBool::new(false);
    let mut images = 0;
    let full = train(&cfg, &a, false, &Device::Cpu, &never, &mut |r| {
        images += r.images
    })
    .unwrap();
    assert_eq!((full.steps, images), (6, 6 * 2 * 4));
    train_stopped_after(&cfg, &b, 2);
    train(&cfg, &b, true, &Device::Cpu, &never, &mut |_| {}).unwrap();
    let f = "unet/diffusion_pytorch_model.safetensors";
    assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap());
}

#[test]
fn stopped_and_resumed_equals_uninterrupted() {
    let _machine = shared();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let never = AtomicBool::new(false);
    let full = train(&config(), &a, false, &Device::Cpu, &never, &mut |_| {}).unwrap();
    assert_eq!(full.steps, 6);
    let part = train_stopped_after(&config(), &b, 4);
    assert_eq!(part.steps, 4);
    assert!(newest_checkpoint(&b.join("checkpoints"))
        .unwrap()
        .ends_with("step-4"));
    let resumed = train(&config(), &b, true, &Device::Cpu, &never, &mut |_| {}).unwrap();
    assert_eq!(resumed.steps, 6);
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "unet_ema/diffusion_pytorch_model.safetensors",
    ] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs after resume");
    }
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
    ] {
        assert!(a.join(f).exists(), "{f}");
    }
    // The result loads as a diffusers pipeline and samples.
    let folder = diffuse_models::weights::resolve_model_folder(&a).unwrap();
    let (model, _) = diffuse_models::weights::load_unet(&folder.net_dir, &Device::Cpu).unwrap();
    assert!(model.is_class_conditional());
    // A half-written checkpoint (no training_state.json) is ignored by resume.
    std::fs::create_dir_all(b.join("checkpoints/step-9/unet")).unwrap();
    assert!(newest_checkpoint(&b.join("checkpoints"))
        .unwrap()
        .ends_with("step-6"));
}

/// `train.max_minutes` plans the run's length after timing its first steps, plans it again at
/// fixed fractions of the plan and ends the LR schedule there. The plan and the re-plans done
/// are kept in the checkpoint: a run stopped after its last re-plan and resumed with any
/// budget keeps the plan, and two such resumes end bit-identical.
#[test]
fn a_time_budget_plans_its_schedule_and_resumes_exactly() {
    let _machine = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (dir.path().join("b"), dir.path().join("c"));
    let base = [
        "data.size=8",
        "train.max_steps=100000",
        "train.lr_warmup_steps=10",
        "train.checkpoint_every=100000",
        "train.log_every=100000",
    ];
    let budget = config_with(&[&base[..], &["train.max_minutes=0.2"]].concat());
    let stop = AtomicBool::new(false);
    let mut plans = Vec::new();
    let mut stopped_at = None;
    train(&budget, &b, false, &Device::Cpu, &stop, &mut |r| {
        if r.notes.iter().any(|w| w.contains("fit in the budget")) {
            plans.push((r.step, r.max_steps));
        }
        // Three steps before the plan's end, past its last re-plan (at 90 %, or 20 steps after
        // the one before; checked below): stop, as Ctrl-C does. A re-plan is said only when it
        // moves the plan, so the notes cannot say when the last one ran.
        if stopped_at.is_none() && r.step + 3 >= r.max_steps {
            stop.store(true, Ordering::SeqCst);
            stopped_at = Some(r.step);
        }
    })
    .unwrap();
    assert_eq!(plans.first().map(|p| p.0), Some(22), "{plans:?}");
    let at = stopped_at.unwrap_or_else(|| panic!("the budget ran out first: {plans:?}"));
    let planned = plans.last().unwrap().1;
    assert!(planned > at, "{plans:?}, stopped at {at}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(b.join(format!("checkpoints/step-{at}/training_state.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["budget"]["planned_steps"].as_u64(), Some(planned));
    assert_eq!(state["budget"]["replans"].as_u64(), Some(4), "{plans:?}");
    assert!(state["budget"]["elapsed_s"].as_f64().unwrap() > 0.0);
    copy_dir(&b, &c);
    let never = AtomicBool::new(false);
    for (dir, minutes) in [(&b, 10), (&c, 20)] {
        let more =
            config_with(&[&base[..], &[&format!("train.max_minutes={minutes}")[..]]].concat());
        let mut notes = Vec::new();
        let resumed = train(&more, dir, true, &Device::Cpu, &never, &mut |r| {
            notes.extend(r.notes.clone())
        })
        .unwrap();
        assert_eq!(resumed.steps, planned, "{notes:?}");
        assert!(
            notes.iter().all(|n| !n.contains("fit in the budget")),
            "{notes:?}"
        );
    }
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "unet_ema/diffusion_pytorch_model.safetensors",
    ] {
        assert!(
            std::fs::read(b.join(f)).unwrap() == std::fs::read(c.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Post-hoc EMA: `train.posthoc_ema` snapshots both profiles at each checkpoint, a stopped and
/// resumed run writes the same snapshots as an uninterrupted one, a snapshot's own width comes
/// back as itself, another width is a finite blend, and the result is a pipeline `sample` loads.
#[test]
fn posthoc_ema_snapshots_resume_exactly_and_reconstruct() {
    let _machine = shared();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg = config_with(&["train.posthoc_ema=[0.05, 0.10]"]);
    let never = AtomicBool::new(false);
    train(&cfg, &a, false, &Device::Cpu, &never, &mut |_| {}).unwrap();
    let snaps = diffuse_train::phema::snapshots(&a).unwrap();
    let found: Vec<(u64, f64)> = snaps.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(found, [(3, 0.05), (3, 0.1), (6, 0.05), (6, 0.1)]);
    train_stopped_after(&cfg, &b, 4);
    train(&cfg, &b, true, &Device::Cpu, &never, &mut |_| {}).unwrap();
    for s in &snaps {
        let name = s.2.file_name().unwrap();
        assert!(
            std::fs::read(&s.2).unwrap() == std::fs::read(b.join("phema").join(name)).unwrap(),
            "{name:?} differs after resume"
        );
    }
    let own = diffuse_train::phema::reconstruct(&a, 0.10, None).unwrap();
    let c: Vec<f64> = own.coefficients.iter().map(|c| c.2).collect();
    assert!(
        (c[3] - 1.0).abs() < 1e-6 && c[..3].iter().all(|x| x.abs() < 1e-6),
        "{c:?}"
    );
    let snap = candle_core::safetensors::load(&snaps[3].2, &Device::Cpu).unwrap();
    for (n, t) in &own.tensors {
        let d = (t - &snap[n]).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{n}");
    }
    let mid = diffuse_train::phema::reconstruct(&a, 0.07, None).unwrap();
    let out = dir.path().join("ema-0.07");
    diffuse_train::phema::write_pipeline(&a, &mid, &out).unwrap();
    let pipe = diffuse_models::pipeline::Pipeline::load(
        &out,
        &diffuse_models::pipeline::LoadOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(pipe.sample_hw().unwrap(), (16, 16));
    // A run without snapshots says how to get them.
    let e = diffuse_train::phema::reconstruct(dir.path(), 0.1, None).unwrap_err();
    assert!(e.to_string().contains("train.posthoc_ema"), "{e}");
}

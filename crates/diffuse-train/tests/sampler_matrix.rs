//! Every sampler on every objective, on tiny models really trained by `diffuse train`'s trainer
//! (ε, x₀, v, flow matching and EDM, from `examples/tiny.toml`), loaded through `Pipeline::load` as
//! `sample`, `eval` and `serve` load them. Each cell of `diffuse_core::compat` is checked:
//! - a deterministic sampler at 50 steps lands within [`ODE_TOL`] (relative L2) of a fine solve
//!   of the same probability-flow ODE (DPM-Solver++(2M) with 250 steps; flow Heun with 200;
//!   EDM's DPM-Solver++(2M) with 250);
//! - a stochastic one (DDPM, Euler ancestral, LCM on x₀ and v models) matches the batch mean and per-image spread of a
//!   fine ancestral solve (DDPM with 250 steps) within [`STAT_TOL`] of that spread: it samples
//!   the reverse SDE's distribution, not the ODE's path, and the two part ways where a briefly
//!   trained ε-model is poor at high noise;
//! - a sampler that reads the output as another objective's misses by 1 to 100 (the bug this
//!   guards against gave black squares), far outside both tolerances.
//! - a refused cell fails in one line that names the sampler, the objective and the samplers
//!   that work.
//!
//! Equality with diffusers per sampler class and prediction type is proven separately by the
//! fixture tests in `diffuse-core` (`sampler_parity`, `flow_solvers`).

use candle_core::{Device, Tensor};
use diffuse_core::compat::{self, Objective};
use diffuse_core::sampler::SamplerOptions;
use diffuse_models::pipeline::{GenerateOptions, LoadOptions, Pipeline};
use diffuse_train::trainer::{train, TrainConfig};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Relative L2 distance to the fine solve allowed for a deterministic sampler at 50 steps
/// (first-order DDIM and PLMS's warm-up are the farthest).
const ODE_TOL: f64 = 0.25;
/// Allowed difference of the batch mean and of the mean per-image spread, as a fraction of the
/// reference's spread.
const STAT_TOL: f64 = 0.3;
const STEPS: usize = 50;
const IMAGES: usize = 16;

fn trained(objective: Objective, out: &Path) -> Pipeline {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiny.toml"
    ))
    .unwrap();
    let mut c = TrainConfig::from_toml(&text).unwrap();
    let mut sets = vec![
        "train.max_steps=200".to_string(),
        "data.size=8".into(),
        "train.checkpoint_every=1000".into(),
        "train.sample_every=0".into(),
        "train.log_every=1000".into(),
    ];
    match objective {
        Objective::Flow => sets.extend([
            "train.prediction_type=\"flow\"".into(),
            "scheduler._class_name=\"FlowMatchEulerDiscreteScheduler\"".into(),
        ]),
        Objective::Edm => {
            c.scheduler.clear();
            c.train.snr_gamma = None;
            sets.push("train.prediction_type=\"edm\"".into());
        }
        o => sets.extend([
            format!("train.prediction_type=\"{}\"", o.prediction_type().name()),
            // diffusers' DDPMScheduler clips x₀ by default, which is not an ODE step.
            "scheduler.clip_sample=false".into(),
        ]),
    }
    for s in &sets {
        c.set(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    train(
        &c,
        out,
        false,
        &Device::Cpu,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let pipe = Pipeline::load(out, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(pipe.objective(), objective);
    pipe
}

/// IMAGES images of class 3 from seed 7 (the same x_T for every sampler).
fn sample(pipe: &Pipeline, sampler: &str, steps: usize) -> diffuse_models::Result<Tensor> {
    let s = pipe.sampler(Some(sampler), Some(steps), SamplerOptions::default())?;
    let opts = GenerateOptions {
        num_images: IMAGES,
        batch_size: IMAGES,
        seed: 7,
        size: pipe.sample_hw().unwrap(),
        class_labels: Some(vec![3]),
        ..Default::default()
    };
    pipe.generate(&s, &opts, 0, &mut |_| ControlFlow::Continue(()))
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap();
    (d.to_scalar::<f32>().unwrap() as f64 / n.to_scalar::<f32>().unwrap() as f64).sqrt()
}

/// The batch's mean over images of each image's pixel mean and pixel standard deviation.
fn stats(x: &Tensor) -> (f64, f64) {
    let flat = x.flatten_from(1).unwrap();
    let mean = flat.mean_keepdim(1).unwrap();
    let std = flat
        .broadcast_sub(&mean)
        .unwrap()
        .sqr()
        .unwrap()
        .mean(1)
        .unwrap()
        .sqrt()
        .unwrap();
    let m = mean.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let s = std.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (m, s)
}

#[test]
fn every_sampler_drives_every_objective_or_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for objective in Objective::ALL {
        let pipe = trained(objective, &dir.path().join(objective.name()));
        let reference = match objective {
            Objective::Flow => sample(&pipe, "flow_heun", 200),
            Objective::Edm => sample(&pipe, "edm_dpmpp_2m", 250),
            _ => sample(&pipe, "dpmpp_2m", 250),
        }
        .unwrap();
        let ancestral = match objective {
            Objective::Flow | Objective::Edm => None,
            _ => Some(sample(&pipe, "ddpm", 250).unwrap()),
        };
        let (ref_mean, ref_std) = stats(ancestral.as_ref().unwrap_or(&reference));
        report.push(format!(
            "{objective}: reference mean {ref_mean:.3}, spread {ref_std:.3}"
        ));
        if ref_std < 0.1 {
            failures.push(format!("{objective}: the reference is blank"));
        }
        for cell in compat::compatible_samplers(objective) {
            let name = cell.sampler;
            if !cell.works() {
                let e = sample(&pipe, name, STEPS).expect_err("refused").to_string();
                assert!(!e.contains('\n'), "{e}");
                assert!(e.contains(&format!("`{name}`")), "{e}");
                assert!(e.contains(&objective.to_string()), "{e}");
                let working = compat::working_samplers(objective).join(", ");
                assert!(
                    e.ends_with(&format!("samplers that work: {working}")),
                    "{e}"
                );
                report.push(format!("{objective} {name}: refused"));
                continue;
            }
            let x = sample(&pipe, name, STEPS).unwrap();
            let (ok, line) = if name == "lcm" && objective == Objective::Epsilon {
                // LCM re-noises its x̂₀ at every step; an ε-model's x̂₀ at t = 999 divides by
                // α = 0.006, so only a consistency student (`diffuse distill consistency`)
                // samples well with it: checked to run and stay finite here.
                let finite = x
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .is_ok_and(|v| v.iter().all(|x| x.is_finite()));
                (
                    finite,
                    format!("{objective} {name}: runs (a consistency sampler)"),
                )
            } else if matches!(name, "ddpm" | "euler_a" | "lcm") {
                let (m, s) = stats(&x);
                let (dm, ds) = (
                    (m - ref_mean).abs() / ref_std,
                    (s - ref_std).abs() / ref_std,
                );
                (
                    dm < STAT_TOL && ds < STAT_TOL,
                    format!("{objective} {name}: mean off by {dm:.3}, spread by {ds:.3} (of the reference spread)"),
                )
            } else {
                let d = rel_l2(&x, &reference);
                (
                    d < ODE_TOL,
                    format!("{objective} {name}: relative L2 to the fine solve {d:.4}"),
                )
            };
            if !ok {
                failures.push(line.clone());
            }
            report.push(line);
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! Unit tests of the consistency maths: boundary scalings by hand, grids, curriculum, solvers.

use super::*;
use candle_core::{Device, Tensor};

fn lcm_config() -> SchedulerConfig {
    let map = serde_json::json!({
        "_class_name": "LCMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
    });
    SchedulerConfig::from_json_map(map.as_object().unwrap()).unwrap()
}

fn scalar(v: f32) -> Tensor {
    Tensor::from_vec(vec![v], (1, 1, 1, 1), &Device::Cpu).unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
}

/// One consistency evaluation against the value computed by hand from the boundary
/// scalings, for each prediction type, and f(x, 0) = x.
#[test]
fn consistency_fn_by_hand_for_each_prediction_type() {
    let fam = Family::of(&lcm_config()).unwrap();
    let p = fam.at_timestep(499.0);
    let abar = match &fam {
        Family::Beta { alphas_cumprod, .. } => alphas_cumprod[499],
        _ => unreachable!(),
    };
    let (a, s) = (abar.sqrt(), (1.0 - abar).sqrt());
    // LCM: c_skip = 0.25/((4990)² + 0.25), c_out = 4990/√(4990² + 0.25).
    let (cs, co) = (
        0.25 / (4990f64.powi(2) + 0.25),
        4990.0 / (4990f64.powi(2) + 0.25).sqrt(),
    );
    assert!((p.c_skip - cs).abs() < 1e-15 && (p.c_out - co).abs() < 1e-12);
    let (x, out) = (0.7f64, -0.3f64);
    let x0 = [
        (PredictionType::Epsilon, (x - s * out) / a),
        (PredictionType::Sample, out),
        (PredictionType::VPrediction, a * x - s * out),
    ];
    for (pred, x0) in x0 {
        let f = consistency_fn(pred, &scalar(out as f32), &scalar(x as f32), &[p]).unwrap();
        let want = cs * x + co * x0;
        assert!(
            (value(&f) - want).abs() < 1e-5,
            "{pred:?}: {} vs {want}",
            value(&f)
        );
        // At the boundary f is the input.
        let b = fam.boundary();
        let f0 = consistency_fn(pred, &scalar(out as f32), &scalar(x as f32), &[b]).unwrap();
        assert_eq!((b.c_skip, b.c_out), (1.0, 0.0));
        assert!((value(&f0) - x).abs() < 1e-6);
    }
    // Flow: f = x − σu; at σ = 0, x.
    let flow = Family::Flow {
        shift: 1.0,
        num_train_timesteps: 1000,
    };
    let q = flow.at_timestep(250.0);
    assert_eq!((q.alpha, q.sigma), (0.75, 0.25));
    let f = consistency_fn(
        PredictionType::Flow,
        &scalar(out as f32),
        &scalar(x as f32),
        &[q],
    )
    .unwrap();
    assert!((value(&f) - (x - 0.25 * out)).abs() < 1e-6);
    let f0 = consistency_fn(
        PredictionType::Flow,
        &scalar(out as f32),
        &scalar(x as f32),
        &[flow.boundary()],
    )
    .unwrap();
    assert!((value(&f0) - x).abs() < 1e-7);
}

#[test]
fn grids_ve_sigma_and_the_curriculum() {
    let fam = Family::of(&lcm_config()).unwrap();
    let g = fam.grid(50).unwrap();
    let t: Vec<f64> = g.iter().map(|p| p.t).collect();
    assert_eq!((t[0], t[1], t[49]), (19.0, 39.0, 999.0));
    assert!(fam.grid(3).unwrap_err().to_string().contains("divide"));
    // A training timestep's own σ maps back to it.
    let p = fam.at_timestep(300.0);
    let q = fam.at_ve_sigma(p.ve_sigma());
    assert!((q.t - 300.0).abs() < 1e-9 && (q.alpha - p.alpha).abs() < 1e-12);
    // Flow: σ_flow = σ/(1 + σ).
    let flow = Family::Flow {
        shift: 3.0,
        num_train_timesteps: 1000,
    };
    assert!((flow.at_ve_sigma(1.0).sigma - 0.5).abs() < 1e-15);
    let fg = flow.grid(4).unwrap();
    assert!((fg[3].sigma - 1.0).abs() < 1e-12 && (fg[1].sigma - 0.75).abs() < 1e-12);
    // ECT: stage 0 at large t gives r = t/2, small t r = 0; each stage halves Δt there.
    assert!((ect_r(80.0, 0, 2.0, 8.0, 1.0) - 40.0).abs() < 1e-9);
    assert_eq!(ect_r(0.01, 0, 2.0, 8.0, 1.0), 0.0);
    let (d1, d2) = (
        80.0 - ect_r(80.0, 1, 2.0, 8.0, 1.0),
        80.0 - ect_r(80.0, 2, 2.0, 8.0, 1.0),
    );
    assert!((d1 / d2 - 2.0).abs() < 1e-6);
}

/// With an exact teacher for Gaussian data x₀ ~ N(0, c²), the second-order solvers land
/// closer to the exact ODE solution than DDIM, on both families.
#[test]
fn solvers_follow_the_exact_ode() {
    let c = 0.5f64;
    // Exact probability-flow ODE for Gaussian data: x/α scales with √(c² + σ²_ve).
    let exact = |x: f64, from: &Point, to: &Point| {
        let sf = (c * c + from.ve_sigma().powi(2)).sqrt();
        let st = (c * c + to.ve_sigma().powi(2)).sqrt();
        to.alpha * x / from.alpha * st / sf
    };
    let lcm = Family::of(&lcm_config()).unwrap();
    let flow = Family::Flow {
        shift: 1.0,
        num_train_timesteps: 1000,
    };
    for fam in [lcm, flow] {
        let g = fam.grid(10).unwrap();
        let (from, to) = (g[6], g[5]);
        let x = 0.9f64;
        let mut eval = |xt: &Tensor, p: &[Point]| -> Result<(Tensor, Tensor)> {
            // x̂₀ = E[x₀|x] = α c² x / (α² c² + σ²), ε̂ = (x − α x̂₀)/σ.
            let (a, s) = (p[0].alpha, p[0].sigma);
            let xv = value(xt);
            let x0 = a * c * c * xv / (a * a * c * c + s * s);
            Ok((scalar(x0 as f32), scalar(((xv - a * x0) / s) as f32)))
        };
        let want = exact(x, &from, &to);
        let mut err = |solver| {
            let y = solve(solver, &fam, &scalar(x as f32), &[from], &[to], &mut eval).unwrap();
            (value(&y) - want).abs()
        };
        let (e1, e2, e3) = (err(Solver::Ddim), err(Solver::Heun), err(Solver::DpmSolver));
        // Second order: closer than DDIM (measured 2.3× and 11× on the β schedule).
        assert!(e2 < e1 / 2.0 && e3 < e1 / 2.0, "{e1} {e2} {e3}");
    }
}

#[test]
fn pseudo_huber_is_sqrt_of_squared_norm_plus_c2_minus_c() {
    let a = Tensor::from_vec(vec![3f32, 0.0, 1.0, 1.0], (2, 2), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(vec![0f32, 4.0, 1.0, 1.0], (2, 2), &Device::Cpu).unwrap();
    let v = pseudo_huber(&a, &b, 0.5).unwrap().to_vec1::<f32>().unwrap();
    assert!((v[0] as f64 - ((25.25f64).sqrt() - 0.5)).abs() < 1e-6 && v[1] == 0.0);
}

//! Parity with Hugging Face diffusers, against the golden files of `tools/fixtures/gen_core.py`
//! (versions in each file's `provenance`). Schedules: 1e-6 relative; trajectories: 1e-5
//! relative (absolute below magnitude 1), every step, closed loop with an analytic denoiser.

use candle_core::{Device, Tensor};
use diffuse_core::config::{PredictionType, SchedulerClass, SchedulerConfig};
use diffuse_core::denoiser::FnDenoiser;
use diffuse_core::noising;
use diffuse_core::rng::ReplayNoise;
use diffuse_core::sampler::{Sampler, SamplerOptions};
use diffuse_core::schedule::NoiseSchedule;
use serde_json::Value;

const SCHEDULE_RTOL: f64 = 1e-6;
const TRAJECTORY_RTOL: f64 = 1e-5;
/// Zero-terminal-SNR rescaling (`rescale_zero_terminal_snr`) takes sqrt(ᾱ) in float32, and
/// torch's AVX-512 float32 sqrt is not correctly rounded (measured with the pinned torch:
/// 177 of the 1000 values of `alphas_cumprod.sqrt()` differ by one ulp from IEEE sqrt, which
/// numpy and Rust give). The rescale's subtraction and ratios amplify those ulps, so quantities
/// of a rescaled schedule get this tolerance instead of 1e-6.
const RESCALED_RTOL: f64 = 2e-5;
/// 2⁻²³ / 1e-6: makes the β tolerance max(1e-6·|β|, 2⁻²³).
const BETA_FLOOR: f64 = 0.119_209_289_550_781_25;

/// The device the trajectories run on: `DIFFUSE_TEST_DEVICE=cuda` (a `--features cuda` build)
/// runs them on GPU 0; default CPU.
fn device() -> Device {
    // One device for the whole run: candle refuses to mix tensors of two CUDA device handles.
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| match std::env::var("DIFFUSE_TEST_DEVICE").as_deref() {
            Ok("cuda") => {
                Device::new_cuda(0).expect("DIFFUSE_TEST_DEVICE=cuda needs a CUDA build and a GPU")
            }
            _ => Device::Cpu,
        })
        .clone()
}

fn load(name: &str) -> Value {
    // The crate's folder, or (for a test binary moved to another machine) the working directory.
    let mut path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    if !std::path::Path::new(&path).exists() {
        path = format!("crates/diffuse-core/tests/fixtures/{name}");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    let prov = &v["provenance"];
    assert!(
        prov["diffusers"].is_string() && prov["torch"].is_string(),
        "{name} lacks a provenance header"
    );
    v
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

thread_local! {
    /// The largest |a − b| / max(|b|, floor) that [`compare`] has seen on this thread (each
    /// test runs on its own thread), for the tests that print their measured error.
    static WORST: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// Returns [`WORST`] and resets it.
fn take_worst() -> f64 {
    WORST.with(|w| w.replace(0.0))
}

/// Element-wise |a − b| ≤ rtol·|b| (rtol·max(|b|, floor) with a floor for values near zero).
fn compare(
    what: &str,
    actual: &[f64],
    expected: &[f64],
    rtol: f64,
    floor: f64,
) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "{what}: length {} != expected {}",
            actual.len(),
            expected.len()
        ));
    }
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if e.is_nan() && a.is_nan() {
            continue;
        }
        let tol = rtol * e.abs().max(floor);
        let rel = (a - e).abs() / e.abs().max(floor);
        WORST.with(|w| w.set(w.get().max(rel)));
        // NaN fails too.
        let within = (a - e).abs() <= tol;
        if !within {
            return Err(format!(
                "{what}[{i}]: got {a:e}, expected {e:e} (|diff| {:e} > tol {tol:e})",
                (a - e).abs()
            ));
        }
    }
    Ok(())
}

/// `set_timesteps(n)` of `cfg` against a recorded case: timesteps, σ and init_noise_sigma to
/// [`SCHEDULE_RTOL`]; the mismatches, each named by `name`.
fn check_plan(cfg: &SchedulerConfig, n: usize, case: &Value, name: &str) -> Vec<String> {
    check_planned(Sampler::new(cfg, n), case, name)
}

/// [`check_plan`] for a plan made any way (`Sampler::with_timesteps` too); `sigmas` null in the
/// case means the class has none.
fn check_planned(s: diffuse_core::Result<Sampler>, case: &Value, name: &str) -> Vec<String> {
    let s = match s {
        Ok(s) => s,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let mut failures = Vec::new();
    if case["sigmas"].is_null() && s.sigmas().is_some() {
        failures.push(format!("{name}: σ planned where diffusers has none"));
    }
    for (what, got, want) in [
        (
            "timesteps",
            s.timesteps().to_vec(),
            floats(&case["timesteps"]),
        ),
        (
            "sigmas",
            s.sigmas().map(<[f64]>::to_vec).unwrap_or_default(),
            if case["sigmas"].is_null() {
                vec![]
            } else {
                floats(&case["sigmas"])
            },
        ),
        (
            "init_noise_sigma",
            vec![s.init_noise_sigma()],
            // null where the class has none (FlowMatch Heun).
            case["init_noise_sigma"].as_f64().into_iter().collect(),
        ),
    ] {
        if what == "init_noise_sigma" && want.is_empty() {
            continue;
        }
        if let Err(e) = compare(what, &got, &want, SCHEDULE_RTOL, 1e-30) {
            failures.push(format!("{name}: {e}"));
        }
    }
    failures
}

/// Runs every recorded trajectory of `file` after its schedules were checked (their mismatches
/// in `failures`); fails on any mismatch and prints the worst errors of both.
fn check_trajectories(file: &str, cases: &[Value], mut failures: Vec<String>) {
    let schedule_worst = take_worst();
    failures.extend(cases.iter().filter_map(|c| run_trajectory(c, None).err()));
    let trajectory_worst = take_worst();
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "{file}: schedules max rel err {schedule_worst:e}, trajectories max err \
         {trajectory_worst:e} (relative, absolute below magnitude 1)"
    );
}

fn config_of(v: &Value) -> SchedulerConfig {
    SchedulerConfig::from_json_map(v.as_object().expect("config object"))
        .unwrap_or_else(|e| panic!("config {v}: {e}"))
}

#[test]
fn betas_and_alphas_cumprod_match_diffusers() {
    let f = load("schedules.json");
    let cases = f["betas"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let cfg = config_of(&case["config"]);
        let s = NoiseSchedule::from_config(&cfg).unwrap();
        let name = format!(
            "{} T={} rescale={}",
            cfg.beta_schedule.name(),
            cfg.num_train_timesteps,
            cfg.rescale_betas_zero_snr
        );
        let rtol = if cfg.rescale_betas_zero_snr {
            RESCALED_RTOL
        } else {
            SCHEDULE_RTOL
        };
        // β = 1 − α is formed from a float32 α near 1: one ulp of α is 2⁻²³ of β.
        compare(
            &format!("{name} betas"),
            &s.betas,
            &floats(&case["betas"]),
            rtol,
            BETA_FLOOR,
        )
        .unwrap();
        compare(
            &format!("{name} alphas_cumprod"),
            &s.alphas_cumprod,
            &floats(&case["alphas_cumprod"]),
            rtol,
            // Near the zero-SNR end ᾱ is a difference of nearly equal square roots: absolute 1e-11.
            if cfg.rescale_betas_zero_snr {
                1e-6
            } else {
                1e-30
            },
        )
        .unwrap();
    }
}

#[test]
fn timesteps_and_sigmas_match_diffusers() {
    let f = load("schedules.json");
    let cases = f["timesteps"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let mut failures = Vec::new();
    for case in cases {
        let cfg = config_of(&case["config"]);
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let name = format!(
            "{} {:?} offset={} karras={} N={n}",
            cfg.class.class_name(),
            cfg.timestep_spacing,
            cfg.steps_offset,
            cfg.use_karras_sigmas
        );
        let rtol = if cfg.rescale_betas_zero_snr {
            RESCALED_RTOL
        } else {
            SCHEDULE_RTOL
        };
        let s = match Sampler::new(&cfg, n) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut check = |r: Result<(), String>| {
            if let Err(e) = r {
                failures.push(format!("{name}: {e}"));
            }
        };
        check(compare(
            "timesteps",
            s.timesteps(),
            &floats(&case["timesteps"]),
            SCHEDULE_RTOL,
            1e-30,
        ));
        if !case["sigmas"].is_null() {
            let sig = s.sigmas().map(|x| x.to_vec()).unwrap_or_default();
            check(compare(
                "sigmas",
                &sig,
                &floats(&case["sigmas"]),
                rtol,
                1e-30,
            ));
        }
        if let Some(init) = case["init_noise_sigma"].as_f64() {
            check(compare(
                "init_noise_sigma",
                &[s.init_noise_sigma()],
                &[init],
                rtol,
                1e-30,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The exact posterior mean E[x₀ | x_t] for x₀ ~ N(μ, s²) — the denoiser the fixtures used.
/// For the EDM classes (`tools/fixtures/gen_edm.py`'s `edm_model`): σ = exp(4t) from the
/// timestep t = c_noise, x = x_in/c_in(σ), and the F whose preconditioned D = c_skip x + c_out F
/// is that posterior mean under x = x₀ + σε (c_out negated for v_prediction), all in f64.
fn analytic(
    x_in: &[f64],
    t: f64,
    cfg: &SchedulerConfig,
    schedule: &NoiseSchedule,
    mu: &[f64],
    std: f64,
) -> Vec<f64> {
    if cfg.class.is_edm() {
        let sigma = (4.0 * t).exp();
        let (sd2, sig2, s2) = (cfg.sigma_data * cfg.sigma_data, sigma * sigma, std * std);
        let c_in = 1.0 / (sig2 + sd2).sqrt();
        let c_skip = sd2 / (sig2 + sd2);
        let mut c_out = sigma * cfg.sigma_data / (sig2 + sd2).sqrt();
        if cfg.prediction_type == PredictionType::VPrediction {
            c_out = -c_out;
        }
        return x_in
            .iter()
            .zip(mu)
            .map(|(&x_in, &m)| {
                let x = x_in / c_in;
                let x0 = m + s2 / (s2 + sig2) * (x - m);
                (x0 - c_skip * x) / c_out
            })
            .collect();
    }
    let (a, b) = if cfg.uses_flow_sigmas() {
        let sigma = t / cfg.num_train_timesteps as f64;
        (1.0 - sigma, sigma)
    } else {
        let abar = schedule.alpha_cumprod_at(t);
        (abar.sqrt(), (1.0 - abar).sqrt())
    };
    let s2 = std * std;
    x_in.iter()
        .zip(mu)
        .map(|(&x, &m)| {
            let x0 = m + a * s2 / (a * a * s2 + b * b) * (x - a * m);
            let eps = (x - a * x0) / b;
            match cfg.prediction_type {
                PredictionType::Epsilon => eps,
                PredictionType::Sample => x0,
                PredictionType::VPrediction => a * eps - b * x0,
                PredictionType::Flow => eps - x0,
            }
        })
        .collect()
}

fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(data, shape, &device()).unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect()
}

/// Runs one recorded trajectory; returns the first mismatch.
fn run_trajectory(case: &Value, perturb: Option<(usize, usize)>) -> Result<(), String> {
    let name = case["name"].as_str().unwrap();
    let cfg = config_of(&case["config"]);
    let n = case["num_inference_steps"].as_u64().unwrap() as usize;
    let kw = &case["step_kwargs"];
    let options = SamplerOptions {
        eta: kw["eta"].as_f64().unwrap_or(0.0),
        use_clipped_model_output: kw["use_clipped_model_output"].as_bool().unwrap_or(false),
        s_churn: kw["s_churn"].as_f64().unwrap_or(0.0),
        ..Default::default()
    };
    // gen_lcm.py's cases with `custom_timesteps` ran set_timesteps(timesteps=...).
    let sampler = match case.get("custom_timesteps") {
        Some(ts) => Sampler::with_timesteps(&cfg, &floats(ts), options),
        None => Sampler::with_options(&cfg, n, options),
    }
    .map_err(|e| format!("{name}: {e}"))?;
    if sampler.num_inference_steps() != n {
        return Err(format!(
            "{name}: {} inference steps, diffusers {n}",
            sampler.num_inference_steps()
        ));
    }
    let shape: Vec<usize> = floats(&case["shape"]).iter().map(|&x| x as usize).collect();
    let mu = floats(&case["data_mean"]);
    let std = case["data_std"].as_f64().unwrap();
    let steps = case["steps"].as_array().unwrap();
    compare(
        &format!("{name} timesteps"),
        sampler.timesteps(),
        &floats(&case["timesteps"]),
        SCHEDULE_RTOL,
        1e-30,
    )?;
    if steps.len() != sampler.len() {
        return Err(format!(
            "{name}: {} steps recorded, sampler plans {}",
            steps.len(),
            sampler.len()
        ));
    }
    // The recorded initial sample is already scaled by init_noise_sigma.
    let mut x = tensor(&floats(&case["initial_sample"]), &shape);
    let mut noise = ReplayNoise::new(steps.iter().flat_map(|s| {
        s["noises"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| tensor(&floats(z), &shape))
            .collect::<Vec<_>>()
    }));
    let mut state = sampler.new_state();
    let schedule = sampler.schedule().clone();
    let model = FnDenoiser(|x_in: &Tensor, t: f64| {
        let out = analytic(&to_f64(x_in), t, &cfg, &schedule, &mu, std);
        Ok(tensor(&out, x_in.dims()))
    });
    for (i, step) in steps.iter().enumerate() {
        let t = sampler.timesteps()[i];
        let x_in = sampler.scale_model_input(&x, i).unwrap();
        compare(
            &format!("{name} step {i} model_input"),
            &to_f64(&x_in),
            &floats(&step["model_input"]),
            TRAJECTORY_RTOL,
            1.0,
        )?;
        let out = diffuse_core::denoiser::Denoiser::predict(&model, &x_in, t).unwrap();
        x = sampler
            .step(&mut state, &out, &x, &mut noise)
            .map_err(|e| format!("{name} step {i}: {e}"))?
            .prev_sample;
        let mut expected = floats(&step["prev_sample"]);
        if let Some((si, k)) = perturb {
            if si == i {
                expected[k] += 1e-4 * expected[k].abs().max(1.0);
            }
        }
        compare(
            &format!("{name} step {i} (t={t}) prev_sample"),
            &to_f64(&x),
            &expected,
            TRAJECTORY_RTOL,
            1.0,
        )?;
    }
    if noise.remaining() != 0 {
        return Err(format!(
            "{name}: {} recorded noise tensors unused",
            noise.remaining()
        ));
    }
    Ok(())
}

#[test]
fn trajectories_match_diffusers() {
    let f = load("trajectories.json");
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 35);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run_trajectory(c, None).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} trajectories differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// FlowMatchHeunDiscreteScheduler (`tools/fixtures/gen_flow.py`): σ and timesteps of
/// `set_timesteps` to 1e-6, closed-loop trajectories (shift 1 and 3, N = 1, 4, 10, and churn
/// with recorded noise) to 1e-5.
#[test]
fn flow_heun_matches_diffusers() {
    let f = load("flow_heun.json");
    let mut failures = Vec::new();
    let cases = f["timesteps"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let cfg = config_of(&case["config"]);
        assert_eq!(cfg.class, SchedulerClass::FlowMatchHeun);
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let name = format!(
            "flow_heun shift={} T={} N={n}",
            cfg.shift, cfg.num_train_timesteps
        );
        let s = Sampler::new(&cfg, n).unwrap();
        assert_eq!(s.len(), 2 * n - 1, "{name}: model calls");
        failures.extend(check_plan(&cfg, n, case, &name));
    }
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    failures.extend(cases.iter().filter_map(|c| run_trajectory(c, None).err()));
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The churn case draws noise in both stages of every step, and the check can fail.
    let churn = cases
        .iter()
        .find(|c| c["name"] == "flow_heun_shift1_churn1")
        .unwrap();
    assert!(churn["steps"][1]["noises"].as_array().unwrap().len() == 1);
    let err = run_trajectory(churn, Some((4, 7))).unwrap_err();
    assert!(err.contains("step 4"), "{err}");
}

/// DPMSolverMultistepScheduler and UniPCMultistepScheduler with `use_flow_sigmas`,
/// `prediction_type = "flow_prediction"` and `flow_shift` (`tools/fixtures/gen_flow_solvers.py`):
/// `set_timesteps` σ and timesteps to 1e-6 (shifts 1, 2, 3, 5; T = 100 and 1000; N = 1 to 100,
/// N = 7 not dividing T; final σ zero and sigma_min), closed-loop trajectories to 1e-5 (orders
/// 1–3, midpoint/Heun, bh1/bh2, SDE-DPM-Solver++ with recorded noise, no lower_order_final,
/// disable_corrector), and DPM-Solver's third order on the β schedule.
#[test]
fn flow_solvers_match_diffusers() {
    let f = load("flow_solvers.json");
    let mut failures = Vec::new();
    let cases = f["timesteps"].as_array().unwrap();
    assert!(cases.len() >= 38);
    take_worst();
    let mut classes = std::collections::BTreeSet::new();
    for case in cases {
        let cfg = config_of(&case["config"]);
        assert!(cfg.use_flow_sigmas && cfg.prediction_type == PredictionType::Flow);
        assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);
        classes.insert(cfg.class.short_name());
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let name = format!(
            "{} flow_shift={} T={} N={n} final={:?}",
            cfg.class.short_name(),
            cfg.flow_shift,
            cfg.num_train_timesteps,
            cfg.final_sigmas_type
        );
        failures.extend(check_plan(&cfg, n, case, &name));
    }
    assert_eq!(classes.len(), 2, "{classes:?}");
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 24);
    check_trajectories("flow_solvers.json", cases, failures);
    // The loops cover both classes, orders 1–3 and the stochastic variant, and a flow case
    // that differs by 1e-4 in one value fails.
    let orders: std::collections::BTreeSet<_> = cases
        .iter()
        .map(|c| {
            let cfg = config_of(&c["config"]);
            (
                cfg.class.short_name(),
                cfg.use_flow_sigmas,
                cfg.solver_order,
            )
        })
        .collect();
    for class in ["dpmpp_2m", "unipc"] {
        for order in 1..=3 {
            assert!(
                orders.contains(&(class, true, order)),
                "{class} order {order}"
            );
        }
    }
    let sde = cases
        .iter()
        .find(|c| c["name"] == "dpm_flow_shift3_sde_o2")
        .unwrap();
    assert_eq!(sde["steps"][3]["noises"].as_array().unwrap().len(), 1);
    for name in ["dpm_flow_shift3_o3", "unipc_flow_shift1_o2"] {
        let case = cases.iter().find(|c| c["name"] == name).unwrap();
        let err = run_trajectory(case, Some((6, 9))).unwrap_err();
        assert!(err.contains("step 6"), "{err}");
    }
}

/// EDMEulerScheduler and EDMDPMSolverMultistepScheduler (`tools/fixtures/gen_edm.py`):
/// `set_timesteps` timesteps (c_noise = ¼ ln σ), σ (final σ included) and init_noise_sigma to
/// 1e-6 for both classes (Karras N = 1, 2, 10, 50; exponential; custom σ_min, σ_max, ρ; final σ
/// `sigma_min`; σ_data = 1); closed-loop trajectories with the analytic EDM denoiser to 1e-5:
/// Euler (Karras, v_prediction, exponential, churn with recorded noise, final `sigma_min`,
/// σ_data = 1) and DPM-Solver++ (orders 1–3, midpoint/Heun, SDE with recorded noise, final
/// `sigma_min`, v_prediction, exponential, euler_at_final, no lower_order_final); EDM's Heun
/// sampler (`edm_heun`) against gen_edm.py's reference of Karras et al.'s Alg. 2 on
/// EDMEulerScheduler (Karras N = 1, 2, 10; final `sigma_min`; trajectories: Karras,
/// v_prediction, churn, N = 1, final `sigma_min`); and a perturbed fixture value is caught.
#[test]
fn edm_schedulers_match_diffusers() {
    let f = load("edm.json");
    let mut failures = Vec::new();
    let cases = f["timesteps"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    take_worst();
    let mut classes = std::collections::BTreeSet::new();
    for case in cases {
        let cfg = config_of(&case["config"]);
        assert!(cfg.class.is_edm(), "{:?}", cfg.class);
        assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);
        classes.insert(cfg.class.short_name());
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let name = format!(
            "{} {:?} sigma [{:?}, {:?}] rho={} sigma_data={} final={:?} N={n}",
            cfg.class.short_name(),
            cfg.sigma_schedule,
            cfg.sigma_min,
            cfg.sigma_max,
            cfg.rho,
            cfg.sigma_data,
            cfg.final_sigmas_type
        );
        failures.extend(check_plan(&cfg, n, case, &name));
    }
    assert_eq!(classes.len(), 3, "{classes:?}");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 21);
    check_trajectories("edm.json", cases, failures);
    // The check can fail.
    // The stochastic cases draw noise every step (Heun at its first call, 2 and 3 here).
    for (name, draws) in [
        ("edm_euler_churn1", [1, 1]),
        ("edm_dpm_sde", [1, 1]),
        ("edm_heun_churn1", [1, 0]),
    ] {
        let case = cases.iter().find(|c| c["name"] == name).unwrap();
        let n = |i: usize| case["steps"][i]["noises"].as_array().unwrap().len();
        assert_eq!([n(2), n(3)], draws, "{name}");
    }
    for name in ["edm_euler_churn1", "edm_dpm_o3_n20"] {
        let case = cases.iter().find(|c| c["name"] == name).unwrap();
        let err = run_trajectory(case, Some((4, 7))).unwrap_err();
        assert!(err.contains("step 4"), "{err}");
    }
}

/// LCMScheduler and custom timesteps (`tools/fixtures/gen_lcm.py`): `set_timesteps(N)` of
/// LCMScheduler over linear/scaled_linear β, T = 1000 and 100, `original_inference_steps` 50 and
/// 20, `set_alpha_to_one` and `steps_offset` both ways, N = 1, 2, 3, 4, 8, 50 (timesteps and
/// init_noise_sigma to 1e-6, no σ); `set_timesteps(timesteps=[...])` of LCMScheduler and
/// FlowMatchEulerDiscreteScheduler (shift 1 and 3: σ to 1e-6); every N and list diffusers
/// raises on refused in one line; closed-loop trajectories to 1e-5: LCM ε/x₀/v at 1, 2, 4 steps,
/// custom timesteps (one with c_skip = 0.5 at the last), clipping, thresholding, T = 100, and
/// FlowMatch Euler on custom timesteps and with `stochastic_sampling`, with recorded noise.
#[test]
fn lcm_and_custom_timesteps_match_diffusers() {
    let f = load("lcm.json");
    let mut failures = Vec::new();
    take_worst();
    let cases = f["timesteps"].as_array().unwrap();
    assert_eq!(cases.len(), 176);
    for case in cases {
        let cfg = config_of(&case["config"]);
        assert_eq!(cfg.class, SchedulerClass::Lcm);
        assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let name = format!(
            "lcm {} T={} original={} alpha_one={} offset={} N={n}",
            cfg.beta_schedule.name(),
            cfg.num_train_timesteps,
            cfg.original_inference_steps,
            cfg.set_alpha_to_one,
            cfg.steps_offset
        );
        failures.extend(check_plan(&cfg, n, case, &name));
    }
    let custom = f["custom"].as_array().unwrap();
    assert_eq!(custom.len(), 10);
    for case in custom {
        let cfg = config_of(&case["config"]);
        let ts = floats(&case["custom_timesteps"]);
        let name = format!("{} custom {ts:?}", cfg.class.short_name());
        let s = Sampler::with_timesteps(&cfg, &ts, SamplerOptions::default());
        if let Ok(s) = &s {
            assert_eq!(s.num_inference_steps(), ts.len(), "{name}");
        }
        failures.extend(check_planned(s, case, &name));
    }
    // What diffusers raises on, refused here in one line: N above original_inference_steps,
    // custom timesteps out of order or from T on.
    let rejected = f["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 19);
    for r in rejected {
        let cfg = config_of(&r["config"]);
        let got = match r.get("custom_timesteps") {
            Some(ts) => Sampler::with_timesteps(&cfg, &floats(ts), SamplerOptions::default()),
            None => Sampler::new(&cfg, r["num_inference_steps"].as_u64().unwrap() as usize),
        };
        match got {
            Ok(_) => failures.push(format!("accepted what diffusers rejects: {}", r["error"])),
            Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
        }
    }
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 19);
    check_trajectories("lcm.json", cases, failures);
    // LCM draws noise at every step but the last (none for one step); FlowMatch's stochastic
    // sampling at every step. A perturbed value is caught.
    let draws = |name: &str| -> Vec<usize> {
        let case = cases.iter().find(|c| c["name"] == name).unwrap();
        case["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["noises"].as_array().unwrap().len())
            .collect()
    };
    assert_eq!(draws("lcm_epsilon_n4"), [1, 1, 1, 0]);
    assert_eq!(draws("lcm_sample_n1"), [0]);
    assert_eq!(draws("flow_euler_custom_4_shift3_stochastic"), [1, 1, 1, 1]);
    for name in [
        "lcm_v_prediction_n4",
        "flow_euler_custom_4_shift3_stochastic",
    ] {
        let case = cases.iter().find(|c| c["name"] == name).unwrap();
        let err = run_trajectory(case, Some((2, 5))).unwrap_err();
        assert!(err.contains("step 2"), "{err}");
    }
}

/// `scheduler_config.json` as diffusers' `save_config` writes it for the two flow-sigma
/// classes reads back as the same scheduler, without ignored keys; the `__init__` keys
/// `compat::resolve_sampler` carries over are diffusers' own.
#[test]
fn saved_flow_solver_configs_and_init_keys_match_diffusers() {
    let f = load("flow_solvers.json");
    let saved = f["saved_configs"].as_array().unwrap();
    assert_eq!(saved.len(), 4);
    for s in saved {
        // As written: DPMSolverMultistep's `"lambda_min_clipped": -Infinity` included.
        let text = s["text"].as_str().unwrap();
        let cfg = SchedulerConfig::from_json_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(cfg.class.class_name(), s["class"].as_str().unwrap());
        assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);
        assert!(cfg.use_flow_sigmas && cfg.uses_flow_sigmas());
        assert_eq!(cfg.prediction_type, PredictionType::Flow);
        let shift = s["kwargs"]["flow_shift"].as_f64().unwrap_or(1.0);
        assert_eq!(cfg.flow_shift, shift);
        // Equal to the same scheduler built from the constructor arguments.
        let kwargs = config_of(&{
            let mut m = s["kwargs"].as_object().unwrap().clone();
            m.insert("_class_name".into(), s["class"].clone());
            Value::Object(m)
        });
        assert_eq!(
            format!("{:?}", Sampler::new(&cfg, 10).unwrap().sigmas()),
            format!("{:?}", Sampler::new(&kwargs, 10).unwrap().sigmas())
        );
        // The flow model's samplers from this config: the FlowMatch classes get `shift`.
        let euler = diffuse_core::compat::resolve_sampler("flow_euler", &cfg).unwrap();
        assert_eq!(euler.class, SchedulerClass::FlowMatchEuler);
        assert_eq!(euler.shift, shift);
    }
    // LCMScheduler's keys are in lcm.json (gen_lcm.py).
    let lcm = load("lcm.json");
    let keys: Vec<&Value> = f["init_keys"]
        .as_array()
        .unwrap()
        .iter()
        .chain(lcm["init_keys"].as_array().unwrap())
        .collect();
    let in_diffusers = SchedulerClass::ALL
        .iter()
        .filter(|c| c.in_diffusers())
        .count();
    assert_eq!(keys.len(), in_diffusers);
    for k in keys {
        let class = SchedulerClass::parse(k["class"].as_str().unwrap()).unwrap();
        let want: Vec<&str> = k["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(class.diffusers_init_keys(), want.as_slice(), "{class:?}");
    }
}

/// Every scheduler class as diffusers saves it by default (`save_config`, Python-flavoured JSON
/// with `-Infinity`) loads with no key ignored, and plans the same 10 steps as diffusers.
#[test]
fn default_configs_as_diffusers_saves_them_load_and_plan_the_same_steps() {
    let f = load("saved_configs.json");
    // LCMScheduler's (default and with other keys) are in lcm.json (gen_lcm.py).
    let lcm = load("lcm.json");
    let saved: Vec<&Value> = f["configs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(lcm["saved_configs"].as_array().unwrap())
        .collect();
    let classes: std::collections::BTreeSet<&str> =
        saved.iter().map(|s| s["class"].as_str().unwrap()).collect();
    let in_diffusers: std::collections::BTreeSet<&str> = SchedulerClass::ALL
        .iter()
        .filter(|c| c.in_diffusers())
        .map(|c| c.class_name())
        .collect();
    assert_eq!(classes, in_diffusers);
    let mut failures = Vec::new();
    for s in saved {
        let text = s["text"].as_str().unwrap();
        let class = s["class"].as_str().unwrap();
        let cfg = SchedulerConfig::from_json_str(text).unwrap_or_else(|e| panic!("{class}: {e}"));
        assert_eq!(cfg.class.class_name(), class);
        assert!(
            cfg.ignored_keys.is_empty(),
            "{class}: {:?}",
            cfg.ignored_keys
        );
        if text.contains("-Infinity") {
            assert_eq!(cfg.lambda_min_clipped, f64::NEG_INFINITY, "{class}");
        }
        // Written back, the tokens stay Python's, and the text reads back the same.
        let v = diffuse_core::pyjson::parse(text).unwrap();
        let back = diffuse_core::pyjson::to_string_pretty(&v);
        assert_eq!(
            text.contains("-Infinity"),
            back.contains(": -Infinity"),
            "{back}"
        );
        assert_eq!(diffuse_core::pyjson::parse(&back).unwrap(), v);
        let n = s["num_inference_steps"].as_u64().unwrap() as usize;
        let sampler = Sampler::new(&cfg, n).unwrap();
        let mut check = |r: Result<(), String>| {
            if let Err(e) = r {
                failures.push(format!("{class}: {e}"));
            }
        };
        let want = floats(&s["timesteps"]);
        check(compare(
            "timesteps",
            sampler.timesteps(),
            &want,
            SCHEDULE_RTOL,
            1e-30,
        ));
        if !s["sigmas"].is_null() {
            let got = sampler.sigmas().map(|x| x.to_vec()).unwrap_or_default();
            check(compare(
                "sigmas",
                &got,
                &floats(&s["sigmas"]),
                SCHEDULE_RTOL,
                1e-30,
            ));
        }
        let init = s["init_noise_sigma"].as_f64().unwrap();
        check(compare(
            "init_noise_sigma",
            &[sampler.init_noise_sigma()],
            &[init],
            SCHEDULE_RTOL,
            1e-30,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_sampler_and_prediction_type_is_covered() {
    let f = load("trajectories.json");
    let heun = load("flow_heun.json");
    let solvers = load("flow_solvers.json");
    let edm = load("edm.json");
    let lcm = load("lcm.json");
    let mut seen = std::collections::BTreeSet::new();
    for c in f["cases"]
        .as_array()
        .unwrap()
        .iter()
        .chain(heun["cases"].as_array().unwrap())
        .chain(solvers["cases"].as_array().unwrap())
        .chain(edm["cases"].as_array().unwrap())
        .chain(lcm["cases"].as_array().unwrap())
    {
        let cfg = config_of(&c["config"]);
        seen.insert((cfg.class.short_name(), cfg.prediction_type.name()));
    }
    for class in SchedulerClass::ALL {
        let preds: &[&str] = match class {
            SchedulerClass::Pndm
            | SchedulerClass::EulerAncestral
            | SchedulerClass::EdmEuler
            | SchedulerClass::EdmDpmSolverMultistep
            | SchedulerClass::EdmHeun => &["epsilon", "v_prediction"],
            SchedulerClass::FlowMatchEuler | SchedulerClass::FlowMatchHeun => &["flow_prediction"],
            SchedulerClass::DpmSolverMultistep | SchedulerClass::UniPcMultistep => {
                &["epsilon", "sample", "v_prediction", "flow_prediction"]
            }
            _ => &["epsilon", "sample", "v_prediction"],
        };
        for p in preds {
            assert!(
                seen.contains(&(class.short_name(), *p)),
                "no trajectory for {class:?} {p}"
            );
        }
    }
}

/// The comparison can fail: a 1e-4 perturbation of one fixture value is caught.
#[test]
fn perturbed_fixtures_are_rejected() {
    let f = load("trajectories.json");
    let case = f["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dpmpp2m_epsilon")
        .unwrap();
    run_trajectory(case, None).unwrap();
    let err = run_trajectory(case, Some((3, 5))).unwrap_err();
    assert!(err.contains("step 3"), "{err}");

    let s = load("schedules.json");
    let case = &s["betas"][0];
    let sched = NoiseSchedule::from_config(&config_of(&case["config"])).unwrap();
    let mut expected = floats(&case["alphas_cumprod"]);
    compare("ac", &sched.alphas_cumprod, &expected, SCHEDULE_RTOL, 1e-30).unwrap();
    expected[500] *= 1.0 + 1e-4;
    assert!(compare("ac", &sched.alphas_cumprod, &expected, SCHEDULE_RTOL, 1e-30).is_err());
}

#[test]
fn forward_process_and_weights_match_diffusers() {
    let f = load("noising.json");
    for case in f["cases"].as_array().unwrap() {
        let cfg = config_of(&case["config"]);
        let sched = NoiseSchedule::from_config(&cfg).unwrap();
        let shape: Vec<usize> = floats(&case["shape"]).iter().map(|&x| x as usize).collect();
        let ts: Vec<usize> = floats(&case["timesteps"])
            .iter()
            .map(|&x| x as usize)
            .collect();
        let x0 = tensor(&floats(&case["original"]), &shape);
        let eps = tensor(&floats(&case["noise"]), &shape);
        let name = format!(
            "{} rescale={}",
            cfg.beta_schedule.name(),
            cfg.rescale_betas_zero_snr
        );
        let rtol = if cfg.rescale_betas_zero_snr {
            RESCALED_RTOL
        } else {
            SCHEDULE_RTOL
        };
        let noisy = noising::add_noise(&sched, &x0, &eps, &ts).unwrap();
        compare(
            &format!("{name} add_noise"),
            &to_f64(&noisy),
            &floats(&case["noisy"]),
            rtol,
            1.0,
        )
        .unwrap();
        let v = noising::get_velocity(&sched, &x0, &eps, &ts).unwrap();
        compare(
            &format!("{name} velocity"),
            &to_f64(&v),
            &floats(&case["velocity"]),
            rtol,
            1.0,
        )
        .unwrap();
        let snr = noising::snr(&sched, &ts).unwrap();
        let w = &case["min_snr_weights"];
        let gamma = w["gamma"].as_f64().unwrap();
        let weights = |p: PredictionType, snr: &[f64]| -> Vec<f64> {
            snr.iter()
                .map(|&s| {
                    let m = s.min(gamma);
                    match p {
                        PredictionType::VPrediction => m / (s + 1.0),
                        PredictionType::Sample => m,
                        _ => m / s,
                    }
                })
                .collect()
        };
        let preds = [
            ("epsilon", PredictionType::Epsilon),
            ("v_prediction", PredictionType::VPrediction),
            ("sample", PredictionType::Sample),
        ];
        if !cfg.rescale_betas_zero_snr {
            compare(
                &format!("{name} snr"),
                &snr,
                &floats(&case["snr"]),
                rtol,
                1e-30,
            )
            .unwrap();
            for (key, p) in preds {
                let got = noising::min_snr_weights(&sched, &ts, gamma, p).unwrap();
                compare(
                    &format!("{name} min-snr {key}"),
                    &got,
                    &floats(&w[key]),
                    rtol,
                    1e-30,
                )
                .unwrap();
            }
        } else {
            // SNR = ᾱ/(1 − ᾱ) near t = 0 turns one float32 ulp of ᾱ (see RESCALED_RTOL) into
            // ~1e-5 of SNR, so check that diffusers' values are what an ᾱ within 4 ulps of ours
            // gives: the interval of SNR (and of each weight) over ᾱ·(1 ± 4·2⁻²⁴).
            let expected_snr = floats(&case["snr"]);
            for (j, &t) in ts.iter().enumerate() {
                let ac = sched.alphas_cumprod[t];
                let u = 4.0 * 2f64.powi(-24);
                let ends = [ac * (1.0 - u), (ac * (1.0 + u)).min(1.0)].map(|a| a / (1.0 - a));
                let within = |what: &str, vals: [f64; 2], e: f64| {
                    let (lo, hi) = (vals[0].min(vals[1]), vals[0].max(vals[1]));
                    let slack = 1e-6 * e.abs();
                    assert!(
                        e.is_nan() || (e >= lo - slack && e <= hi + slack),
                        "{name} {what}[{j}] t={t}: expected {e} outside [{lo}, {hi}]"
                    );
                };
                within("snr", ends, expected_snr[j]);
                for (key, p) in preds {
                    let wv = weights(p, &ends);
                    within(key, [wv[0], wv[1]], floats(&w[key])[j]);
                }
            }
            let got =
                noising::min_snr_weights(&sched, &ts, gamma, PredictionType::Epsilon).unwrap();
            assert!(got.iter().zip(&snr).all(|(w, s)| (w - weights(
                PredictionType::Epsilon,
                &[*s]
            )[0])
                .abs()
                < 1e-6
                || w.is_nan()));
        }
    }
}

#[test]
fn unknown_config_keys_from_real_diffusers_configs_are_tolerated() {
    // Every config diffusers wrote in the fixtures parses without ignored keys except the
    // ones diffuse really does not read.
    let f = load("schedules.json");
    for case in f["timesteps"].as_array().unwrap() {
        let cfg = config_of(&case["config"]);
        assert!(
            cfg.ignored_keys.is_empty(),
            "{:?}: {:?}",
            cfg.class,
            cfg.ignored_keys
        );
    }
}

/// Issue 26: image-to-image starts where diffusers' img2img pipelines start it — the same
/// first call (`get_timesteps`), the same remaining timesteps, and the same noised sample
/// (`add_noise`, `scale_noise`) — for every scheduler class, 10 and 25 steps, 7 strengths.
#[test]
fn img2img_start_matches_diffusers() {
    let v = load("img2img.json");
    let shape = [1usize, 1, 2, 3];
    let x0 = tensor(&floats(&v["provenance"]["x0"]), &shape);
    let eps = tensor(&floats(&v["provenance"]["noise"]), &shape);
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 182);
    let mut noised_cases = 0;
    for case in cases {
        let cfg = config_of(&case["config"]);
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let strength = case["strength"].as_f64().unwrap();
        let what = format!("{} N={n} strength {strength}", cfg.class.class_name());
        let s = Sampler::new(&cfg, n).unwrap();
        let begin = s.begin_index(strength).unwrap();
        let want = floats(&case["timesteps"]);
        if want.is_empty() {
            assert_eq!(begin, s.len(), "{what}: no step runs");
            continue;
        }
        assert_eq!(
            begin,
            case["begin_index"].as_u64().unwrap() as usize,
            "{what}"
        );
        compare(&what, &s.timesteps()[begin..], &want, 1e-6, 1.0).unwrap();
        let got = to_f64(&s.add_noise(&x0, &eps, begin).unwrap());
        // α x₀ + σ ε of O(1) terms: float32 rounding is absolute, hence the floor of 1.
        compare(&what, &got, &floats(&case["noised"]), 1e-6, 1.0).unwrap();
        noised_cases += 1;
    }
    println!(
        "img2img: {noised_cases} noised starts, worst relative error {:.2e}",
        take_worst()
    );
}

//! Latent Consistency Models' multistep sampler (Luo et al. 2023), diffusers
//! `scheduling_lcm.py` (`LCMScheduler`).
//!
//! The plan is a subset of the distillation's grid: with k = T // `original_inference_steps`
//! the grid is k−1, 2k−1, …, T−1 (`lcm_origin_timesteps`), and N timesteps are taken from it,
//! descending, at the indices ⌊i·len/N⌋ (numpy `linspace(0, len, N, endpoint=False)`, floored).
//! `timestep_spacing` and `steps_offset` are config keys diffusers keeps but never reads here.
//!
//! Each step forms the model's x₀ (as DDIM does, clipped or thresholded as the config says),
//! applies the consistency boundary condition denoised = c_out·x₀ + c_skip·x at the timestep,
//! and, at every step but the last, noises it again to the next timestep's ᾱ with fresh noise:
//! x' = √ᾱ′·denoised + √(1 − ᾱ′)·z. The last step returns `denoised` itself, so diffusers'
//! `final_alpha_cumprod` (`set_alpha_to_one`) is never read: the previous timestep of the last
//! step is the step's own, never below 0.

use super::{clip_or_threshold, lin, vp_x0, Extra, Plan, StepIn, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// σ_data of the boundary scalings; diffusers fixes it at 0.5.
const SIGMA_DATA: f64 = 0.5;

/// The consistency boundary scalings (c_skip, c_out) at `timestep` (diffusers
/// `get_scalings_for_boundary_condition_discrete`), with s = timestep·`timestep_scaling`:
/// c_skip = σ_data²/(s² + σ_data²), c_out = s/√(s² + σ_data²), σ_data = 0.5; c_skip(0) = 1,
/// c_out(0) = 0, so the model's output is ignored at t = 0.
///
/// Computed in f64. diffusers' `LCMScheduler.step` gets the timestep as the int64 tensor of its
/// plan, so there (and in [`crate::sampler::Sampler::step`], which matches it) the scalings are
/// float32 tensor arithmetic; the two differ by float32 rounding only (< 1e-7 relative).
pub fn lcm_boundary(timestep: f64, timestep_scaling: f64) -> (f64, f64) {
    let s = timestep * timestep_scaling;
    let d = s * s + SIGMA_DATA * SIGMA_DATA;
    (SIGMA_DATA * SIGMA_DATA / d, s / d.sqrt())
}

/// [`lcm_boundary`] as diffusers' step computes it: `timestep` (int64 tensor) × python float
/// is a float32 tensor, then `0.25 / (s**2 + 0.25)` (torch: reciprocal × 0.25) and
/// `s / (s**2 + 0.25) ** 0.5` (torch's `pow(0.5)` is `sqrt`), all in float32.
fn boundary_f32(timestep: f64, timestep_scaling: f64) -> (f64, f64) {
    let s = timestep as f32 * timestep_scaling as f32;
    let sd2 = (SIGMA_DATA * SIGMA_DATA) as f32;
    let d = s * s + sd2;
    ((1.0 / d * sd2) as f64, (s / d.sqrt()) as f64)
}

/// The distillation's grid `lcm_origin_timesteps` (ascending) at strength 1:
/// i·k − 1 for i = 1..=original_inference_steps, k = T // original_inference_steps.
fn origin_timesteps(config: &SchedulerConfig) -> Vec<usize> {
    let k = config.num_train_timesteps / config.original_inference_steps;
    (1..=config.original_inference_steps)
        .map(|i| i * k - 1)
        .collect()
}

/// `set_timesteps(num_inference_steps)` (strength 1, the config's `original_inference_steps`).
pub(super) fn plan(config: &SchedulerConfig, n: usize) -> Result<Plan> {
    let original = config.original_inference_steps;
    // The config parser refuses both; a config built by hand may hold them.
    if original == 0 || original > config.num_train_timesteps {
        return Err(Error::Sampler(format!(
            "LCMScheduler: original_inference_steps must be in 1..=num_train_timesteps ({}), got \
             {original}",
            config.num_train_timesteps
        )));
    }
    let mut origin = origin_timesteps(config);
    // diffusers: skipping_step = len // N < 1, then N > original_steps (the same at strength 1).
    if origin.len() / n < 1 || n > original {
        return Err(Error::Sampler(format!(
            "LCMScheduler: num_inference_steps {n} cannot exceed original_inference_steps \
             {original}: the plan is a subset of that {original}-step grid"
        )));
    }
    origin.reverse();
    // np.floor(np.linspace(0, len, N, endpoint=False)): i·(len/N) in f64, floored.
    let step = origin.len() as f64 / n as f64;
    let timesteps = (0..n)
        .map(|i| origin[(i as f64 * step).floor() as usize] as f64)
        .collect();
    Ok(unit_plan(timesteps))
}

/// `set_timesteps(timesteps=[...])`: integer training timesteps, strictly descending, below
/// T. diffusers raises on the order and on timesteps[0] ≥ T (and casts to int64 silently,
/// indexing ᾱ from the end for a negative one): both are errors here. Its warnings (a first
/// timestep other than T − 1, timesteps off the distillation grid, more timesteps than
/// `original_inference_steps`) are not.
pub(super) fn custom_plan(config: &SchedulerConfig, timesteps: &[f64]) -> Result<Plan> {
    let t_max = config.num_train_timesteps;
    for (i, &t) in timesteps.iter().enumerate() {
        if !(t.is_finite() && t >= 0.0 && t.fract() == 0.0) {
            return Err(Error::Sampler(format!(
                "LCMScheduler custom timesteps must be integer training timesteps in 0..{t_max}, \
                 got {t} at position {i}"
            )));
        }
        if i > 0 && t >= timesteps[i - 1] {
            return Err(Error::Sampler(format!(
                "LCMScheduler custom timesteps must be strictly descending, got {t} after {} at \
                 position {i}",
                timesteps[i - 1]
            )));
        }
    }
    if timesteps[0] >= t_max as f64 {
        return Err(Error::Sampler(format!(
            "LCMScheduler custom timesteps must start below num_train_timesteps {t_max}, got {}",
            timesteps[0]
        )));
    }
    Ok(unit_plan(timesteps.to_vec()))
}

/// Timesteps on the β schedule, x_T = ε; the final ᾱ is never read (see the module doc), so
/// the sample after the last step is the clean `denoised` (α = 1, σ = 0 for the edit code).
fn unit_plan(timesteps: Vec<f64>) -> Plan {
    Plan {
        timesteps,
        sigmas: None,
        init_noise_sigma: 1.0,
        extra: Extra::None,
    }
}

pub(super) fn step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let t = s.timesteps[i];
    let ap = s.alpha_cumprod(t)? as f32;
    let (c_skip, c_out) = boundary_f32(t, s.config.timestep_scaling);
    let x0 = vp_x0(s.config.prediction_type, model_output, sample, ap as f64)?;
    let x0 = clip_or_threshold(&s.config, x0)?;
    let denoised = lin(c_out, &x0, c_skip, sample)?;
    // No noise at the last step (nor, so, for one-step sampling).
    let gamma = s.options.gamma;
    let prev = if i + 1 != s.num_inference_steps && gamma < 1.0 {
        // γ-sampling: the DDIM jump to s = ⌊(1 − γ)·t_next⌋ with ε̂ = (x − √ᾱ_t·denoised)/√(1 − ᾱ_t),
        // then forward noise from s to t_next (γ = 0: a deterministic DDIM step).
        let next = s.timesteps[i + 1];
        let to = ((1.0 - gamma) * next).floor();
        let (a_t, a_s, a_n) = (ap as f64, s.alpha_cumprod(to)?, s.alpha_cumprod(next)?);
        let eps = lin(
            1.0 / (1.0 - a_t).sqrt(),
            sample,
            -(a_t / (1.0 - a_t)).sqrt(),
            &denoised,
        )?;
        let x_s = lin(a_s.sqrt(), &denoised, (1.0 - a_s).sqrt(), &eps)?;
        let r = a_n / a_s;
        if r >= 1.0 {
            x_s
        } else {
            let z = noise.randn(sample.shape(), sample.dtype(), sample.device())?;
            lin(r.sqrt(), &x_s, (1.0 - r).sqrt(), &z)?
        }
    } else if i + 1 != s.num_inference_steps {
        let ap_prev = s.alpha_cumprod(s.timesteps[i + 1])? as f32;
        let z = noise.randn(sample.shape(), sample.dtype(), sample.device())?;
        lin(
            ap_prev.sqrt() as f64,
            &denoised,
            (1.0 - ap_prev).sqrt() as f64,
            &z,
        )?
    } else {
        denoised.clone()
    };
    StepOutput::with_x0(prev, denoised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SchedulerClass, SchedulerConfig};
    use crate::rng::ReplayNoise;
    use crate::sampler::Sampler;
    use candle_core::{Device, Tensor};

    fn lcm(json: &str) -> SchedulerConfig {
        let mut m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).unwrap();
        m.insert("_class_name".into(), "LCMScheduler".into());
        SchedulerConfig::from_json_map(&m).unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
    }

    #[test]
    fn boundary_scalings_at_zero_and_by_hand() {
        assert_eq!(lcm_boundary(0.0, 10.0), (1.0, 0.0));
        assert_eq!(boundary_f32(0.0, 10.0), (1.0, 0.0));
        // t = 1, scaling 10: s = 10, s² + ¼ = 100.25.
        let (c_skip, c_out) = lcm_boundary(1.0, 10.0);
        assert!((c_skip - 0.25 / 100.25).abs() < 1e-16);
        assert!((c_out - 10.0 / 100.25f64.sqrt()).abs() < 1e-16);
        let (k32, o32) = boundary_f32(1.0, 10.0);
        assert!((k32 - c_skip).abs() <= 1e-7 * c_skip && (o32 - c_out).abs() <= 1e-7);
    }

    /// One step at t = 19 of a one-step plan (no noise), x = 0.8, against values worked out
    /// by hand in f64: T = 1000 linear β in [0.0001, 0.02], ᾱ_19 = Π_{s ≤ 19}(1 − β_s) =
    /// 0.994230951686, a = √ᾱ = 0.997111303560, b = √(1 − ᾱ) = 0.075954251453;
    /// s = 19·10 = 190, c_skip = 0.25/(190² + 0.25) = 6.92515979806e-6,
    /// c_out = 190/√(190² + 0.25) = 0.999996537414; x' = c_out·x₀ + c_skip·x.
    #[test]
    fn one_step_equals_the_hand_computed_boundary_condition() {
        let base = r#""beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02"#;
        let (c_skip, c_out) = lcm_boundary(19.0, 10.0);
        assert!((c_skip - 6.925_159_798_06e-6).abs() < 1e-17, "{c_skip}");
        assert!((c_out - 0.999_996_537_414).abs() < 1e-12, "{c_out}");
        for (pred, output, x0, want) in [
            // ε = 0.3: x₀ = (x − b·ε)/a = (0.8 − 0.075954251453·0.3)/0.997111303560.
            ("epsilon", 0.3, 0.779_465_363_385, 0.779_468_204_547),
            // x₀ = 0.1 as given.
            ("sample", 0.1, 0.1, 0.100_005_193_869),
            // v = −0.2: x₀ = a·x − b·v = 0.997111303560·0.8 + 0.075954251453·0.2.
            ("v_prediction", -0.2, 0.812_879_893_138, 0.812_882_618_600),
        ] {
            assert!((c_out * x0 + c_skip * 0.8 - want).abs() < 1e-11, "{pred}");
            let cfg = lcm(&format!(r#"{{{base}, "prediction_type": "{pred}"}}"#));
            let s = Sampler::with_timesteps(&cfg, &[19.0], Default::default()).unwrap();
            let sample = Tensor::new(&[[0.8f32]], &Device::Cpu).unwrap();
            let out = Tensor::new(&[[output as f32]], &Device::Cpu).unwrap();
            let mut noise = ReplayNoise::new([]);
            let r = s
                .step(&mut s.new_state(), &out, &sample, &mut noise)
                .unwrap();
            // float32 tensors and the float32 ᾱ table: a few 1e-7 off the f64 values.
            let got = scalar(&r.prev_sample);
            assert!((got - want).abs() < 2e-6, "{pred}: {got} vs {want}");
            assert_eq!(scalar(r.pred_original_sample.as_ref().unwrap()), got);
        }
    }

    #[test]
    fn plans_follow_the_distillation_grid() {
        let d = SchedulerConfig::default_for(SchedulerClass::Lcm);
        assert_eq!((d.original_inference_steps, d.timestep_scaling), (50, 10.0));
        assert!(d.set_alpha_to_one && !d.clip_sample);
        let plan = |n| Sampler::new(&d, n).unwrap().timesteps().to_vec();
        assert_eq!(plan(1), [999.0]);
        assert_eq!(plan(3), [999.0, 679.0, 339.0]);
        assert_eq!(plan(4), [999.0, 759.0, 499.0, 259.0]);
        let e = Sampler::new(&d, 51).unwrap_err().to_string();
        assert!(
            e.contains("original_inference_steps 50") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn custom_timesteps_are_checked_in_one_line() {
        let d = SchedulerConfig::default_for(SchedulerClass::Lcm);
        let s = Sampler::with_timesteps(&d, &[800.0, 300.0, 10.0], Default::default()).unwrap();
        assert_eq!((s.num_inference_steps(), s.len()), (3, 3));
        for (ts, needle) in [
            (&[499.0, 999.0][..], "strictly descending"),
            (&[999.0, 999.0][..], "strictly descending"),
            (&[1000.0, 500.0][..], "below num_train_timesteps 1000"),
            (&[999.0, 499.5][..], "integer training timesteps"),
            (&[999.0, -1.0][..], "integer training timesteps"),
            (&[][..], "empty"),
        ] {
            let e = Sampler::with_timesteps(&d, ts, Default::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{ts:?}: {e}");
        }
        let ddim = SchedulerConfig::default_for(SchedulerClass::Ddim);
        let e = Sampler::with_timesteps(&ddim, &[999.0, 499.0], Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("DDIMScheduler")
                && e.contains("LCMScheduler")
                && e.contains("FlowMatchEulerDiscreteScheduler")
                && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn config_keys_are_typed_and_checked() {
        let c = lcm(r#"{"original_inference_steps": 20, "timestep_scaling": 5.0}"#);
        assert_eq!((c.original_inference_steps, c.timestep_scaling), (20, 5.0));
        assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
        assert_eq!(c.beta_schedule.name(), "scaled_linear");
        for (json, key) in [
            (
                r#"{"_class_name": "lcm", "original_inference_steps": 0}"#,
                "original_inference_steps",
            ),
            (
                r#"{"_class_name": "lcm", "num_train_timesteps": 100, "original_inference_steps": 101}"#,
                "original_inference_steps",
            ),
            (
                r#"{"_class_name": "lcm", "timestep_scaling": 0}"#,
                "timestep_scaling",
            ),
            (
                r#"{"_class_name": "lcm", "prediction_type": "flow_prediction"}"#,
                "prediction_type",
            ),
        ] {
            let e = SchedulerConfig::from_json_str(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{json}: {e}");
        }
    }

    /// γ-sampling: γ = 0 is the deterministic DDIM jump (no noise drawn), γ = ½ jumps to
    /// ⌊t_next/2⌋ and noises from there with the one recorded draw; on flow, γ = 0 is the
    /// Euler step.
    #[test]
    fn gamma_zero_is_ddim_and_gamma_half_noises_from_the_midpoint() {
        use crate::sampler::SamplerOptions;
        let c = lcm(r#"{"prediction_type": "sample"}"#);
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[0.8f32]]]], &dev).unwrap();
        let out = Tensor::new(&[[[[0.3f32]]]], &dev).unwrap();
        let opts = |gamma| SamplerOptions {
            gamma,
            ..Default::default()
        };
        let abar = |t: f64| Sampler::new(&c, 2).unwrap().schedule().alphas_cumprod[t as usize];
        let s0 = Sampler::with_options(&c, 2, opts(0.0)).unwrap();
        let (t, next) = (s0.timesteps()[0], s0.timesteps()[1]);
        assert_eq!((t, next), (999.0, 499.0));
        let (c_skip, c_out) = boundary_f32(t, 10.0);
        let d = c_out * 0.3 + c_skip * 0.8;
        let eps = (0.8 - abar(t).sqrt() * d) / (1.0 - abar(t)).sqrt();
        let mut st = s0.new_state();
        let y = s0
            .step(&mut st, &out, &x, &mut ReplayNoise::new(vec![]))
            .unwrap();
        let want = abar(next).sqrt() * d + (1.0 - abar(next)).sqrt() * eps;
        assert!((scalar(&y.prev_sample) - want).abs() < 1e-5);
        // γ = ½: DDIM to s = 249, then √(ᾱ_n/ᾱ_s)·x_s + √(1 − ᾱ_n/ᾱ_s)·z with z = 2.
        let sh = Sampler::with_options(&c, 2, opts(0.5)).unwrap();
        let z = Tensor::new(&[[[[2f32]]]], &dev).unwrap();
        let mut st = sh.new_state();
        let y = sh
            .step(&mut st, &out, &x, &mut ReplayNoise::new(vec![z]))
            .unwrap();
        let x_s = abar(249.0).sqrt() * d + (1.0 - abar(249.0)).sqrt() * eps;
        let r = abar(next) / abar(249.0);
        let want = r.sqrt() * x_s + (1.0 - r).sqrt() * 2.0;
        assert!(
            (scalar(&y.prev_sample) - want).abs() < 1e-5,
            "{}",
            scalar(&y.prev_sample)
        );
        assert!(Sampler::with_options(&c, 2, opts(1.5)).is_err());
        // Stochastic FlowMatch Euler at γ = 0: the deterministic Euler step x + (σ' − σ)u.
        let f = SchedulerConfig::from_json_str(
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": true}"#,
        )
        .unwrap();
        let sf = Sampler::with_timesteps(&f, &[1000.0, 500.0], opts(0.0)).unwrap();
        let mut st = sf.new_state();
        let y = sf
            .step(&mut st, &out, &x, &mut ReplayNoise::new(vec![]))
            .unwrap();
        assert!((scalar(&y.prev_sample) - (0.8 - 0.5 * 0.3)).abs() < 1e-6);
        let _ = SchedulerClass::Lcm;
    }
}

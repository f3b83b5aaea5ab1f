//! PNDM / PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models"),
//! diffusers `scheduling_pndm.py`: Runge–Kutta warm-up (PRK) unless `skip_prk_steps`, then
//! linear multistep (PLMS) over ε.

use super::{lin, Extra, Plan, Sampler, SamplerState, StepIn, StepOutput};
use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};
use crate::schedule::{arange_desc, linspace, round_half_even, NoiseSchedule};
use candle_core::Tensor;

pub(super) fn plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    let t_train = config.num_train_timesteps;
    // Ascending, as diffusers' `_timesteps`.
    let base: Vec<f64> = match config.timestep_spacing {
        TimestepSpacing::Linspace => linspace(0.0, (t_train - 1) as f64, n)
            .into_iter()
            .map(round_half_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t_train / n;
            (0..n)
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let mut v: Vec<f64> = arange_desc(t_train as f64, 0.0, t_train as f64 / n as f64)
                .into_iter()
                .map(|x| round_half_even(x) - 1.0)
                .collect();
            v.reverse();
            v
        }
    };
    let (prk, plms): (Vec<f64>, Vec<f64>) = if config.skip_prk_steps {
        // [t_{N-1}, t_{N-2}, t_{N-2}, t_{N-3}, ..., t_0]: the second timestep is used twice.
        let m = base.len();
        let mut v: Vec<f64> = base[..m - 1].to_vec();
        v.push(base[m.saturating_sub(2).min(m - 1)]);
        if m >= 2 {
            v.push(base[m - 1]);
        }
        v.reverse();
        (vec![], v)
    } else {
        if n < 4 {
            return Err(Error::config(
                "skip_prk_steps",
                format!("PNDM with Runge–Kutta warm-up needs at least 4 steps, got {n}; set skip_prk_steps=true"),
            ));
        }
        let half = (t_train / n / 2) as f64;
        let last4 = &base[base.len() - 4..];
        let mut prk: Vec<f64> = last4.iter().flat_map(|&t| [t, t + half]).collect();
        prk.pop();
        let mut rep: Vec<f64> = prk.iter().flat_map(|&t| [t, t]).collect();
        rep.remove(0);
        rep.pop();
        rep.reverse();
        let mut plms = base[..base.len() - 3].to_vec();
        plms.reverse();
        (rep, plms)
    };
    let final_alpha = if config.set_alpha_to_one {
        1.0
    } else {
        schedule.alphas_cumprod[0]
    };
    let prk_len = prk.len();
    Ok(Plan {
        timesteps: prk.into_iter().chain(plms).collect(),
        sigmas: None,
        init_noise_sigma: 1.0,
        extra: Extra::Pndm {
            final_alpha,
            prk_len,
        },
    })
}

pub(super) fn step(x: StepIn, st: &mut SamplerState) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let prk_len = match s.extra {
        Extra::Pndm { prk_len, .. } => prk_len,
        _ => 0,
    };
    let ratio = (s.config.num_train_timesteps / s.num_inference_steps) as i64;
    let t = s.timesteps[i] as i64;
    // `counter` in diffusers is the step index.
    let counter = i;
    let prev = if counter < prk_len {
        let diff = if counter % 2 == 1 { 0 } else { ratio / 2 };
        let prev_t = t - diff;
        let t_base = s.timesteps[counter / 4 * 4] as i64;
        let out = match counter % 4 {
            0 => {
                st.saved_derivative = Some((model_output * (1.0 / 6.0))?);
                st.history.push(model_output.clone());
                st.saved_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                let acc = st.saved_derivative.take().expect("set at counter % 4 == 0");
                st.saved_derivative = Some((acc + (model_output * (1.0 / 3.0))?)?);
                model_output.clone()
            }
            _ => {
                let acc = st.saved_derivative.take().expect("set at counter % 4 == 0");
                (acc + (model_output * (1.0 / 6.0))?)?
            }
        };
        let cur = st.saved_sample.clone().unwrap_or_else(|| sample.clone());
        prev_sample(s, &cur, t_base, prev_t, &out)?
    } else {
        let mut t = t;
        let mut prev_t = t - ratio;
        if counter != 1 {
            let keep = st.history.len().saturating_sub(3);
            st.history.drain(..keep);
            st.history.push(model_output.clone());
        } else {
            prev_t = t;
            t += ratio;
        }
        let e = &st.history;
        let m = e.len();
        let mut x = sample.clone();
        let out = if m == 1 && counter == 0 {
            st.saved_sample = Some(sample.clone());
            model_output.clone()
        } else if m == 1 && counter == 1 {
            x = st.saved_sample.take().expect("set at step 0");
            ((model_output + &e[0])? * 0.5)?
        } else if m == 2 {
            lin(1.5, &e[1], -0.5, &e[0])?
        } else if m == 3 {
            ((lin(23.0, &e[2], -16.0, &e[1])? + (&e[0] * 5.0)?)? / 12.0)?
        } else {
            let a = lin(55.0, &e[m - 1], -59.0, &e[m - 2])?;
            let b = lin(37.0, &e[m - 3], -9.0, &e[m - 4])?;
            ((a + b)? / 24.0)?
        };
        prev_sample(s, &x, t, prev_t, &out)?
    };
    Ok(StepOutput {
        prev_sample: prev,
        pred_original_sample: None,
    })
}

/// Eq. 11 of the PNDM paper: the pseudo-linear step from t to prev_t given ε.
fn prev_sample(s: &Sampler, x: &Tensor, t: i64, prev_t: i64, out: &Tensor) -> Result<Tensor> {
    let ap = s.alpha_cumprod(t as f64)? as f32;
    let ap_prev = if prev_t >= 0 {
        s.alpha_cumprod(prev_t as f64)? as f32
    } else {
        s.final_alpha() as f32
    };
    let (bp, bp_prev) = (1.0 - ap, 1.0 - ap_prev);
    let eps = match s.config.prediction_type {
        PredictionType::VPrediction => lin(ap.sqrt() as f64, out, bp.sqrt() as f64, x)?,
        _ => out.clone(),
    };
    let sample_coeff = (ap_prev / ap).sqrt();
    let denom = ap * bp_prev.sqrt() + (ap * bp * ap_prev).sqrt();
    lin(
        sample_coeff as f64,
        x,
        -((ap_prev - ap) / denom) as f64,
        &eps,
    )
}

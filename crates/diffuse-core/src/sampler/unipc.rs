//! UniPC multistep predictor–corrector (Zhao et al. 2023), diffusers
//! `scheduling_unipc_multistep.py`: B(h) = bh1 or bh2, orders 1–3, data or noise prediction,
//! on the β schedule's σ or on flow-matching σ (`use_flow_sigmas`; plan in `dpmpp_2m.rs`).

use super::{lin, Plan, Sampler, SamplerState, StepIn, StepOutput};
use crate::config::{SchedulerConfig, UniPcSolverType};
use crate::error::{Error, Result};
use crate::schedule::NoiseSchedule;
use candle_core::Tensor;

pub(super) fn plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    super::dpmpp_2m::multistep_plan(config, schedule, n)
}

pub(super) fn step(x: StepIn, st: &mut SamplerState) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let c = &s.config;
    let sigmas = s.planned_sigmas();
    let n = s.timesteps.len();
    let use_corrector =
        i > 0 && !c.disable_corrector.contains(&(i - 1)) && st.saved_sample.is_some();
    let m = super::dpmpp_2m::convert(c, c.predict_x0, model_output, sample, sigmas[i])?;
    let mut x = sample.clone();
    if use_corrector {
        let last = st.saved_sample.as_ref().expect("checked");
        x = update(s, &st.history, i, Some(&m), last, st.this_order)?;
    }
    st.history.push(m);
    if st.history.len() > c.solver_order {
        st.history.remove(0);
    }
    let order = if c.lower_order_final {
        c.solver_order.min(n - i)
    } else {
        c.solver_order
    };
    st.this_order = order.min(st.lower_order_nums + 1);
    st.saved_sample = Some(x.clone());
    let prev = update(s, &st.history, i, None, &x, st.this_order)?;
    if st.lower_order_nums < c.solver_order {
        st.lower_order_nums += 1;
    }
    let x0 = if c.predict_x0 {
        st.history.last().cloned()
    } else {
        None
    };
    Ok(StepOutput {
        prev_sample: prev,
        pred_original_sample: x0,
    })
}

/// UniP (predictor, `model_t` = None: from σ_i to σ_{i+1}) or UniC (corrector, with the new
/// model output `model_t`: re-does the step from σ_{i−1} to σ_i).
fn update(
    s: &Sampler,
    history: &[Tensor],
    i: usize,
    model_t: Option<&Tensor>,
    x: &Tensor,
    order: usize,
) -> Result<Tensor> {
    let c = &s.config;
    let sigmas = s.planned_sigmas();
    let corrector = model_t.is_some();
    // The step's end points: predictor s0 = i → t = i+1; corrector s0 = i−1 → t = i.
    let (it, is0) = if corrector { (i, i - 1) } else { (i + 1, i) };
    let (alpha_t, sigma_t, lambda_t) = super::dpmpp_2m::lambda(c, sigmas[it]);
    let (alpha_s0, sigma_s0, lambda_s0) = super::dpmpp_2m::lambda(c, sigmas[is0]);
    let h = lambda_t - lambda_s0;
    let m0 = &history[history.len() - 1];

    let mut rks = Vec::new();
    let mut d1s = Vec::new();
    for k in 1..order {
        let si = is0 - k;
        let mi = &history[history.len() - 1 - k];
        let (_, _, lambda_si) = super::dpmpp_2m::lambda(c, sigmas[si]);
        let rk = (lambda_si - lambda_s0) / h;
        rks.push(rk);
        d1s.push(((mi - m0)? * (1.0 / rk))?);
    }
    rks.push(1.0);

    let hh = if c.predict_x0 { -h } else { h };
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    let b_h = match c.unipc_solver_type {
        UniPcSolverType::Bh1 => hh,
        UniPcSolverType::Bh2 => hh.exp_m1(),
    };
    let mut r_mat = Vec::new();
    let mut b = Vec::new();
    for k in 1..=order {
        r_mat.push(rks.iter().map(|r| r.powi(k as i32 - 1)).collect::<Vec<_>>());
        b.push(h_phi_k * factorial / b_h);
        factorial *= (k + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }

    let (x_scale, m_scale, res_scale) = if c.predict_x0 {
        (sigma_t / sigma_s0, -alpha_t * h_phi_1, -alpha_t * b_h)
    } else {
        (alpha_t / alpha_s0, -sigma_t * h_phi_1, -sigma_t * b_h)
    };
    let x_t_ = lin(x_scale, x, m_scale, m0)?;
    match model_t {
        None => {
            if d1s.is_empty() {
                return Ok(x_t_);
            }
            let rhos = if order == 2 {
                vec![0.5]
            } else {
                let k = order - 1;
                let sub: Vec<Vec<f64>> = r_mat[..k].iter().map(|r| r[..k].to_vec()).collect();
                solve(sub, b[..k].to_vec())?
            };
            let res = weighted_sum(&rhos, &d1s)?;
            Ok((x_t_ + (res * res_scale)?)?)
        }
        Some(model_t) => {
            let rhos = if order == 1 {
                vec![0.5]
            } else {
                solve(r_mat, b)?
            };
            let d1_t = (model_t - m0)?;
            let last = rhos[rhos.len() - 1];
            let mut res = (d1_t * last)?;
            if !d1s.is_empty() {
                res = (res + weighted_sum(&rhos[..rhos.len() - 1], &d1s)?)?;
            }
            Ok((x_t_ + (res * res_scale)?)?)
        }
    }
}

fn weighted_sum(w: &[f64], ts: &[Tensor]) -> Result<Tensor> {
    let mut acc = (&ts[0] * w[0])?;
    for (wi, t) in w.iter().zip(ts).skip(1) {
        acc = (acc + (t * *wi)?)?;
    }
    Ok(acc)
}

/// Solves the small dense system `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .expect("non-empty");
        if a[piv][col] == 0.0 || !a[piv][col].is_finite() {
            return Err(Error::Sampler("UniPC: singular order system".into()));
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot_row = a[col].clone();
        for r in col + 1..n {
            let f = a[r][col] / pivot_row[col];
            for (x, p) in a[r][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Ok(x)
}

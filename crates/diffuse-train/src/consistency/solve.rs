//! The consistency function from a network output, the teacher's skip-step ODE solvers (DDIM,
//! Heun, DPM-Solver++(2S): Lu et al. 2022, "DPM-Solver++", Alg. 1 with r = ½), iCT's
//! pseudo-Huber distance and ECT's Δt curriculum.

use super::time::{Family, Point};
use super::Solver;
use crate::Result;
use candle_core::Tensor;
use diffuse_core::config::PredictionType;
use diffuse_core::noising::{self, per_row};

/// The teacher's (x̂₀, ε̂) at x and per-row points.
pub type TeacherEval<'a> = dyn FnMut(&Tensor, &[Point]) -> Result<(Tensor, Tensor)> + 'a;

/// Per-row columns of points.
pub(super) fn col(points: &[Point], f: impl Fn(&Point) -> f64) -> Vec<f64> {
    points.iter().map(f).collect()
}

pub(super) fn times(points: &[Point]) -> Vec<f32> {
    points.iter().map(|p| p.t as f32).collect()
}

/// Σ aᵢ·xᵢ with per-row coefficients.
pub(super) fn lin(terms: &[(&[f64], &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (c, x) in terms {
        let t = x.broadcast_mul(&per_row(c, x)?)?;
        acc = Some(match acc {
            None => t,
            Some(a) => (a + t)?,
        });
    }
    Ok(acc.expect("at least one term"))
}

/// The consistency function from a raw network output `out` at `x`: c_skip·x + c_out·x̂₀.
pub fn consistency_fn(
    prediction: PredictionType,
    out: &Tensor,
    x: &Tensor,
    points: &[Point],
) -> Result<Tensor> {
    let (x0, _) = noising::to_x0_eps(
        prediction,
        out,
        x,
        &col(points, |p| p.alpha),
        &col(points, |p| p.sigma),
    )?;
    lin(&[
        (&col(points, |p| p.c_skip), x),
        (&col(points, |p| p.c_out), &x0),
    ])
}

/// One teacher ODE step from x at `from` to `to` with `solver`; `eval(x, points)` gives the
/// teacher's (x̂₀, ε̂). Rows whose `to` has σ = 0 take the first-order step.
pub fn solve(
    solver: Solver,
    family: &Family,
    x: &Tensor,
    from: &[Point],
    to: &[Point],
    eval: &mut TeacherEval,
) -> Result<Tensor> {
    let (x0, eps) = eval(x, from)?;
    let ddim = lin(&[(&col(to, |p| p.alpha), &x0), (&col(to, |p| p.sigma), &eps)])?;
    let to_zero: Vec<bool> = to.iter().map(|p| p.sigma == 0.0).collect();
    if solver == Solver::Ddim || to_zero.iter().all(|&z| z) {
        return Ok(ddim);
    }
    let second = match (solver, family) {
        (Solver::Heun, Family::Flow { .. }) => {
            // dx/dσ = u = ε̂ − x̂₀; x_s = x_t + (s − t)·(u_t + u_s')/2.
            let (x0s, epss) = eval(&ddim, to)?;
            let u = (&eps - &x0)?;
            let us = (&epss - &x0s)?;
            let half: Vec<f64> = from
                .iter()
                .zip(to)
                .map(|(f, t)| 0.5 * (t.sigma - f.sigma))
                .collect();
            lin(&[(&vec![1.0; to.len()], x), (&half, &u), (&half, &us)])?
        }
        (Solver::Heun, Family::Beta { .. }) => {
            // y = x/α, dy/d(σ/α) = ε̂; x_s = α_s·(y_t + Δ·(ε̂_t + ε̂_s')/2).
            let (_, epss) = eval(&ddim, to)?;
            let ratio: Vec<f64> = from
                .iter()
                .zip(to)
                .map(|(f, t)| t.alpha / f.alpha)
                .collect();
            let half: Vec<f64> = from
                .iter()
                .zip(to)
                .map(|(f, t)| 0.5 * t.alpha * (t.ve_sigma() - f.ve_sigma()))
                .collect();
            lin(&[(&ratio, x), (&half, &eps), (&half, &epss)])?
        }
        (_, _) => {
            // DPM-Solver++(2S), r = ½: λ = ln(α/σ), h = λ_s − λ_t, u the log-SNR midpoint;
            // x_u = (σ_u/σ_t)x − α_u(e^{−h/2} − 1)x̂₀_t, x_s = (σ_s/σ_t)x − α_s(e^{−h} − 1)x̂₀_u.
            let lam = |p: &Point| (p.alpha / p.sigma).ln();
            let mid: Vec<Point> = from
                .iter()
                .zip(to)
                .map(|(f, t)| {
                    let (lf, lt) = (lam(f), lam(t));
                    if lf.is_finite() && lt.is_finite() {
                        family.at_ve_sigma((-(0.5 * (lf + lt))).exp())
                    } else {
                        *t
                    }
                })
                .collect();
            // (σ_b/σ_a, −α_b(e^{−h} − 1)); e^{−h} = 0 where λ_a = −∞ (α_a = 0) or λ_b = ∞.
            let c = |a: &Point, b: &Point| -> (f64, f64) {
                let e = (-(lam(b) - lam(a))).exp();
                (b.sigma / a.sigma, -b.alpha * (e - 1.0))
            };
            let (r1, c1): (Vec<f64>, Vec<f64>) =
                from.iter().zip(&mid).map(|(f, m)| c(f, m)).unzip();
            let x_u = lin(&[(&r1, x), (&c1, &x0)])?;
            let (x0u, _) = eval(&x_u, &mid)?;
            let (r2, c2): (Vec<f64>, Vec<f64>) = from.iter().zip(to).map(|(f, t)| c(f, t)).unzip();
            lin(&[(&r2, x), (&c2, &x0u)])?
        }
    };
    // Rows that land on σ = 0 keep the first-order step.
    let keep: Vec<f64> = to_zero.iter().map(|&z| if z { 1.0 } else { 0.0 }).collect();
    let other: Vec<f64> = keep.iter().map(|k| 1.0 - k).collect();
    lin(&[(&keep, &ddim), (&other, &second)])
}

/// iCT's pseudo-Huber distance per row, √(‖a − b‖² + c²) − c.
pub fn pseudo_huber(a: &Tensor, b: &Tensor, c: f64) -> Result<Tensor> {
    let d = (a - b)?.flatten_from(1)?;
    Ok(((d.sqr()?.sum(1)? + c * c)?.sqrt()? - c)?)
}

/// ECT's r of t at curriculum `stage`: t·(1 − (1 + k·sigmoid(−b·t)) / q^(stage+1)), ≥ 0.
pub fn ect_r(t: f64, stage: u64, q: f64, k: f64, b: f64) -> f64 {
    let adj = 1.0 + k / (1.0 + (b * t).exp());
    let decay = q.powf(-((stage + 1) as f64));
    (t * (1.0 - decay * adj)).max(0.0)
}

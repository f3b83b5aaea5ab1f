//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias correction, ε outside
//! the square root) over named candle `Var`s, with state that a checkpoint can save and load;
//! and `clip_grad_norm` as `torch.nn.utils.clip_grad_norm_` (ε = 1e-6).

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use diffuse_models::kernels;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates made so far (torch's per-parameter `step`).
    pub step: u64,
}

impl AdamW {
    /// `vars` in a fixed order (e.g. sorted by name), zero moments.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| Tensor::zeros(v.shape(), DType::F32, v.device());
        let m = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        Ok(AdamW {
            config,
            vars,
            m,
            v,
            step: 0,
        })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with learning rate `lr`; variables without a gradient are left alone.
    pub fn update(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        // The in-place CPU passes: the same f32 operations as below, with no temporaries.
        let fused = kernels::adamw::AdamWStep {
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            inv_bias_correction2: (1.0 / bc2_sqrt) as f32,
            eps: c.eps as f32,
            decay: (1.0 - lr * c.weight_decay) as f32,
            step_size: (lr / bc1) as f32,
        };
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            let (m, v) = (&self.m[i], &self.v[i]);
            if kernels::adamw::applies(&[var.as_tensor(), g, m, v]) {
                kernels::adamw::step(var.as_tensor(), g, m, v, fused)?;
                continue;
            }
            // Gradients carry the backward graph; the moments must not (they would keep every
            // step's activations alive).
            let g = g.detach().to_dtype(DType::F32)?;
            // m ← m + (1 − β1)(g − m)  (torch's lerp); v ← β2 v + (1 − β2) g²
            self.m[i] = (&self.m[i] + ((&g - &self.m[i])? * (1.0 - c.beta1))?)?.detach();
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let p = var.as_tensor().detach();
            let p = (p * (1.0 - lr * c.weight_decay))?;
            let denom = ((self.v[i].sqrt()? / bc2_sqrt)? + c.eps)?;
            let p = (p - (self.m[i].div(&denom)? * (lr / bc1))?)?;
            var.set(&p)?;
        }
        Ok(())
    }

    /// Moments keyed `exp_avg.{name}` / `exp_avg_sq.{name}`, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.m[i].clone()));
            out.push((format!("exp_avg_sq.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (key, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let k = format!("{key}.{name}");
                let t = tensors
                    .get(&k)
                    .ok_or_else(|| Error::Invalid(format!("optimizer state lacks `{k}`")))?;
                if t.dims() != var.dims() {
                    return Err(Error::Invalid(format!(
                        "optimizer state `{k}` has shape {:?}, the variable {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                // A copy of its own: the CPU update writes the moments in place.
                *slot = t.to_dtype(DType::F32)?.to_device(var.device())?.copy()?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scales the gradients of `vars` so that their global L2 norm is at most `max_norm`;
/// returns the norm before clipping (NaN/∞ if a gradient is not finite).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v) {
            if let Some(sq) = kernels::adamw::sum_squares(g)? {
                total += sq;
                continue;
            }
            let n: f32 = g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .sqrt()?
                .to_scalar()?;
            total += (n as f64) * (n as f64);
        }
    }
    let total = total.sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        for (_, v) in vars {
            if let Some(g) = grads.get(v) {
                let scaled = (g.detach() * coef)?;
                grads.insert(v, scaled);
            }
        }
    }
    Ok(total)
}

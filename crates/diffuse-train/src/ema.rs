//! Exponential moving average of the weights, diffusers `training_utils.EMAModel`:
//! decay(k) = 0 until `update_after_step`, then 1 − (1 + k/γ)^(−power) with warmup or
//! (1 + k)/(10 + k) without, clamped to [min_decay, decay]; shadow ← shadow − (1 − d)(shadow − p).

use crate::Result;
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy)]
pub struct EmaConfig {
    pub decay: f64,
    pub min_decay: f64,
    pub update_after_step: u64,
    pub use_ema_warmup: bool,
    pub inv_gamma: f64,
    pub power: f64,
}

impl Default for EmaConfig {
    /// diffusers' `train_unconditional.py` settings.
    fn default() -> Self {
        EmaConfig {
            decay: 0.9999,
            min_decay: 0.0,
            update_after_step: 0,
            use_ema_warmup: true,
            inv_gamma: 1.0,
            power: 0.75,
        }
    }
}

/// Shadow weights, one per model variable (same order).
pub struct Ema {
    pub config: EmaConfig,
    shadow: Vec<Tensor>,
    /// Updates made so far (diffusers' `optimization_step`).
    pub optimization_step: u64,
    /// The decay of the last update.
    pub last_decay: f64,
}

impl Ema {
    pub fn new(vars: &[Var], config: EmaConfig) -> Result<Self> {
        Ok(Ema {
            config,
            shadow: vars
                .iter()
                .map(|v| v.as_tensor().detach().copy())
                .collect::<candle_core::Result<_>>()?,
            optimization_step: 0,
            last_decay: 0.0,
        })
    }

    pub fn decay(&self, optimization_step: u64) -> f64 {
        let c = &self.config;
        let step = optimization_step.saturating_sub(c.update_after_step + 1);
        if step == 0 {
            return 0.0;
        }
        let s = step as f64;
        let d = if c.use_ema_warmup {
            1.0 - (1.0 + s / c.inv_gamma).powf(-c.power)
        } else {
            (1.0 + s) / (10.0 + s)
        };
        d.min(c.decay).max(c.min_decay)
    }

    /// One update towards the current weights.
    pub fn step(&mut self, vars: &[Var]) -> Result<()> {
        self.optimization_step += 1;
        let d = self.decay(self.optimization_step);
        self.last_decay = d;
        for (s, v) in self.shadow.iter_mut().zip(vars) {
            // In place on the CPU (the shadow's storage is this struct's alone: `new` and
            // `set_shadow` copy, `shadow()` readers copy or use it at once).
            if diffuse_models::kernels::adamw::applies(&[s, v.as_tensor()]) {
                diffuse_models::kernels::adamw::ema_step(s, v.as_tensor(), (1.0 - d) as f32)?;
                continue;
            }
            let p = v.as_tensor().detach();
            *s = (&*s - ((&*s - &p)? * (1.0 - d))?)?.detach();
        }
        Ok(())
    }

    /// The shadow weights. On the CPU `step` updates them in place: copy what must outlive it.
    pub fn shadow(&self) -> &[Tensor] {
        &self.shadow
    }

    /// Restores shadow weights (from a checkpoint).
    pub fn set_shadow(&mut self, shadow: Vec<Tensor>, optimization_step: u64) -> Result<()> {
        // Copies of their own: `step` updates the shadow in place.
        self.shadow = shadow
            .iter()
            .map(|t| t.copy())
            .collect::<candle_core::Result<_>>()?;
        self.optimization_step = optimization_step;
        Ok(())
    }
}

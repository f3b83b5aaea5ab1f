//! EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
//! Generative Models", Table 1), as diffusers' `scheduling_edm_euler.py` computes it.
//!
//! The noise process is x_σ = x₀ + σ ε. The network F sees c_in(σ)·x_σ at time
//! c_noise(σ) = ¼ ln σ, and the denoiser is D(x; σ) = c_skip(σ) x + c_out(σ) F, with
//! c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²). diffusers
//! calls this F-prediction `prediction_type = "epsilon"`; its `"v_prediction"` negates c_out.
//! Training draws ln σ ~ N(P_mean, P_std²) and weighs ‖D − x₀‖² by λ = 1/c_out², which is the
//! plain MSE of F against [`Precond::target_coefficients`]. Scalars follow diffusers' float32 tensor math.

/// The four coefficients for one σ_data (and the sign of c_out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Precond {
    pub sigma_data: f64,
    /// diffusers' `v_prediction` variant: c_out negated.
    pub negate_out: bool,
}

impl Precond {
    pub fn new(sigma_data: f64) -> Self {
        Precond {
            sigma_data,
            negate_out: false,
        }
    }

    /// c_in = 1/√(σ² + σ_d²).
    pub fn c_in(&self, sigma: f64) -> f64 {
        let (s, d) = (sigma as f32, self.sigma_data as f32);
        (1.0 / (s * s + d * d).sqrt()) as f64
    }

    /// c_noise = ¼ ln σ: the timestep the network is given.
    pub fn c_noise(sigma: f64) -> f64 {
        (0.25f32 * (sigma as f32).ln()) as f64
    }

    /// (c_skip, c_out) at σ.
    pub fn skip_out(&self, sigma: f64) -> (f64, f64) {
        let (s, d) = (sigma as f32, self.sigma_data as f32);
        let c_skip = d * d / (s * s + d * d);
        let c_out = s * d / (s * s + d * d).sqrt();
        let c_out = if self.negate_out { -c_out } else { c_out };
        (c_skip as f64, c_out as f64)
    }

    /// The F that makes D exact: (x₀ − c_skip x_σ)/c_out, per σ. Its MSE against F is EDM's
    /// λ(σ)-weighted denoising loss.
    pub fn target_coefficients(&self, sigma: f64) -> (f64, f64) {
        let (c_skip, c_out) = self.skip_out(sigma);
        (1.0 / c_out, -c_skip / c_out)
    }
}

/// EDM's training σ distribution: ln σ ~ N(p_mean, p_std²) (the paper: −1.2, 1.2).
pub fn lognormal_sigma(p_mean: f64, p_std: f64, z: f64) -> f64 {
    (p_mean + p_std * z).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_denoiser_is_exact_for_its_target_and_weights_match_the_paper() {
        let p = Precond::new(0.5);
        for sigma in [0.002, 0.1, 0.5, 1.0, 7.0, 80.0] {
            let (c_skip, c_out) = p.skip_out(sigma);
            let (a, b) = p.target_coefficients(sigma);
            // x₀ = 0.3, ε = −1.2: D(x_σ) with F = target gives x₀ back.
            let (x0, eps) = (0.3, -1.2);
            let x = x0 + sigma * eps;
            let f = a * x0 + b * x;
            assert!((c_skip * x + c_out * f - x0).abs() < 1e-5, "σ {sigma}");
            // λ(σ) = (σ² + σ_d²)/(σ σ_d)² = 1/c_out².
            let lambda = (sigma * sigma + 0.25) / (sigma * 0.5).powi(2);
            assert!((lambda * c_out * c_out - 1.0).abs() < 1e-5);
            // c_in² (σ² + σ_d²) = 1: unit-variance network input for unit-variance data.
            assert!((p.c_in(sigma).powi(2) * (sigma * sigma + 0.25) - 1.0).abs() < 1e-5);
        }
        assert!((Precond::c_noise(80.0) - 0.25 * 80f64.ln()).abs() < 1e-6);
        assert!((lognormal_sigma(-1.2, 1.2, 0.0) - (-1.2f64).exp()).abs() < 1e-12);
        let v = Precond {
            negate_out: true,
            ..p
        };
        assert_eq!(v.skip_out(2.0).1, -p.skip_out(2.0).1);
    }
}

//! `_class_name`: which diffusers scheduler a config describes.

use crate::error::{Error, Result};

/// The diffusers scheduler class, picked by `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerClass {
    Ddpm,
    Ddim,
    Pndm,
    Euler,
    EulerAncestral,
    Heun,
    DpmSolverMultistep,
    UniPcMultistep,
    FlowMatchEuler,
    FlowMatchHeun,
    EdmEuler,
    EdmDpmSolverMultistep,
    /// EDM's Heun sampler (Karras et al. 2022, Alg. 1/2; k-diffusion `sample_heun`): diffuse's
    /// own, diffusers has no such class ([`SchedulerClass::in_diffusers`]).
    EdmHeun,
    /// Latent Consistency Models' multistep sampler (Luo et al. 2023), diffusers
    /// `LCMScheduler`: the consistency function's x₀ at each timestep, noised again to the next.
    Lcm,
}

impl SchedulerClass {
    pub const ALL: [SchedulerClass; 14] = [
        SchedulerClass::Ddpm,
        SchedulerClass::Ddim,
        SchedulerClass::Pndm,
        SchedulerClass::Euler,
        SchedulerClass::EulerAncestral,
        SchedulerClass::Heun,
        SchedulerClass::DpmSolverMultistep,
        SchedulerClass::UniPcMultistep,
        SchedulerClass::FlowMatchEuler,
        SchedulerClass::FlowMatchHeun,
        SchedulerClass::EdmEuler,
        SchedulerClass::EdmDpmSolverMultistep,
        SchedulerClass::EdmHeun,
        SchedulerClass::Lcm,
    ];

    /// The diffusers class name.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerClass::Ddpm => "DDPMScheduler",
            SchedulerClass::Ddim => "DDIMScheduler",
            SchedulerClass::Pndm => "PNDMScheduler",
            SchedulerClass::Euler => "EulerDiscreteScheduler",
            SchedulerClass::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerClass::Heun => "HeunDiscreteScheduler",
            SchedulerClass::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerClass::UniPcMultistep => "UniPCMultistepScheduler",
            SchedulerClass::FlowMatchEuler => "FlowMatchEulerDiscreteScheduler",
            SchedulerClass::FlowMatchHeun => "FlowMatchHeunDiscreteScheduler",
            SchedulerClass::EdmEuler => "EDMEulerScheduler",
            SchedulerClass::EdmDpmSolverMultistep => "EDMDPMSolverMultistepScheduler",
            SchedulerClass::EdmHeun => "EDMHeunScheduler",
            SchedulerClass::Lcm => "LCMScheduler",
        }
    }

    /// Short names used on the command line (`--sampler ddim`).
    pub fn short_name(self) -> &'static str {
        match self {
            SchedulerClass::Ddpm => "ddpm",
            SchedulerClass::Ddim => "ddim",
            SchedulerClass::Pndm => "plms",
            SchedulerClass::Euler => "euler",
            SchedulerClass::EulerAncestral => "euler_a",
            SchedulerClass::Heun => "heun",
            SchedulerClass::DpmSolverMultistep => "dpmpp_2m",
            SchedulerClass::UniPcMultistep => "unipc",
            SchedulerClass::FlowMatchEuler => "flow_euler",
            SchedulerClass::FlowMatchHeun => "flow_heun",
            SchedulerClass::EdmEuler => "edm_euler",
            SchedulerClass::EdmDpmSolverMultistep => "edm_dpmpp_2m",
            SchedulerClass::EdmHeun => "edm_heun",
            SchedulerClass::Lcm => "lcm",
        }
    }

    /// Whether diffusers has the class (every one but [`SchedulerClass::EdmHeun`]): only those
    /// may be a pipeline's `scheduler/`.
    pub fn in_diffusers(self) -> bool {
        self != SchedulerClass::EdmHeun
    }

    /// Parses a diffusers class name or one of our short names.
    pub fn parse(name: &str) -> Result<Self> {
        SchedulerClass::ALL
            .into_iter()
            .find(|c| c.class_name() == name || c.short_name() == name)
            .ok_or_else(|| {
                let allowed: Vec<_> = SchedulerClass::ALL.iter().map(|c| c.class_name()).collect();
                Error::config(
                    "_class_name",
                    format!(
                        "unknown scheduler class {name:?}; allowed: {}",
                        allowed.join(", ")
                    ),
                )
            })
    }

    /// Whether the class works in sigma space (k-diffusion style: inputs scaled by 1/sqrt(σ²+1)).
    pub fn uses_sigmas(self) -> bool {
        matches!(
            self,
            SchedulerClass::Euler
                | SchedulerClass::EulerAncestral
                | SchedulerClass::Heun
                | SchedulerClass::DpmSolverMultistep
                | SchedulerClass::UniPcMultistep
                | SchedulerClass::FlowMatchEuler
                | SchedulerClass::FlowMatchHeun
                | SchedulerClass::EdmEuler
                | SchedulerClass::EdmDpmSolverMultistep
                | SchedulerClass::EdmHeun
        )
    }

    /// Whether the class is a flow-matching (rectified flow) sampler: x_σ = (1 − σ)x₀ + σε,
    /// the model predicts the velocity ε − x₀, no β schedule.
    pub fn is_flow(self) -> bool {
        matches!(
            self,
            SchedulerClass::FlowMatchEuler | SchedulerClass::FlowMatchHeun
        )
    }

    /// Whether the class is an EDM scheduler (Karras et al. 2022): x_σ = x₀ + σε with the
    /// network preconditioned by c_in, c_noise, c_skip, c_out (`crate::edm`), no β schedule.
    pub fn is_edm(self) -> bool {
        matches!(
            self,
            SchedulerClass::EdmEuler
                | SchedulerClass::EdmDpmSolverMultistep
                | SchedulerClass::EdmHeun
        )
    }

    /// Whether the class plans on a β schedule (ᾱ), i.e. neither flow matching nor EDM.
    pub fn has_beta_schedule(self) -> bool {
        !self.is_flow() && !self.is_edm()
    }

    /// diffusers 0.42.1 `__init__` keys of the class: what `from_config` (and so
    /// `compat::resolve_sampler`) can carry over to it; checked against diffusers by the parity
    /// tests.
    #[rustfmt::skip]
    pub fn diffusers_init_keys(self) -> &'static [&'static str] {
        use SchedulerClass as C;
        match self {
            C::Ddpm => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "variance_type", "clip_sample", "prediction_type", "thresholding",
                "dynamic_thresholding_ratio", "clip_sample_range", "sample_max_value",
                "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
            ],
            C::Ddim => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "clip_sample", "set_alpha_to_one", "steps_offset", "prediction_type", "thresholding",
                "dynamic_thresholding_ratio", "clip_sample_range", "sample_max_value",
                "timestep_spacing", "rescale_betas_zero_snr",
            ],
            C::Pndm => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "skip_prk_steps", "set_alpha_to_one", "prediction_type", "timestep_spacing",
                "steps_offset",
            ],
            C::Euler => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "prediction_type", "interpolation_type", "use_karras_sigmas", "use_exponential_sigmas",
                "use_beta_sigmas", "sigma_min", "sigma_max", "timestep_spacing", "timestep_type",
                "steps_offset", "rescale_betas_zero_snr", "final_sigmas_type",
            ],
            C::EulerAncestral => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "prediction_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
            ],
            C::Heun => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "prediction_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                "clip_sample", "clip_sample_range", "timestep_spacing", "steps_offset",
            ],
            C::DpmSolverMultistep => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "solver_order", "prediction_type", "thresholding", "dynamic_thresholding_ratio",
                "sample_max_value", "algorithm_type", "solver_type", "lower_order_final",
                "euler_at_final", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                "use_lu_lambdas", "use_flow_sigmas", "flow_shift", "final_sigmas_type",
                "lambda_min_clipped", "variance_type", "timestep_spacing", "steps_offset",
                "rescale_betas_zero_snr", "use_dynamic_shifting", "time_shift_type",
            ],
            C::UniPcMultistep => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "solver_order", "prediction_type", "thresholding", "dynamic_thresholding_ratio",
                "sample_max_value", "predict_x0", "solver_type", "lower_order_final",
                "disable_corrector", "solver_p", "use_karras_sigmas", "use_exponential_sigmas",
                "use_beta_sigmas", "use_flow_sigmas", "flow_shift", "timestep_spacing", "steps_offset",
                "final_sigmas_type", "rescale_betas_zero_snr", "use_dynamic_shifting",
                "time_shift_type", "sigma_min", "sigma_max", "shift_terminal",
            ],
            C::FlowMatchEuler => &[
                "num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                "base_image_seq_len", "max_image_seq_len", "invert_sigmas", "shift_terminal",
                "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "time_shift_type",
                "stochastic_sampling",
            ],
            C::FlowMatchHeun => &["num_train_timesteps", "shift"],
            // EDMHeunScheduler reads EDMEulerScheduler's config.
            C::EdmEuler | C::EdmHeun => &[
                "sigma_min", "sigma_max", "sigma_data", "sigma_schedule", "num_train_timesteps",
                "prediction_type", "rho", "final_sigmas_type",
            ],
            C::EdmDpmSolverMultistep => &[
                "sigma_min", "sigma_max", "sigma_data", "sigma_schedule", "num_train_timesteps",
                "prediction_type", "rho", "solver_order", "thresholding", "dynamic_thresholding_ratio",
                "sample_max_value", "algorithm_type", "solver_type", "lower_order_final",
                "euler_at_final", "final_sigmas_type",
            ],
            C::Lcm => &[
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "original_inference_steps", "clip_sample", "clip_sample_range", "set_alpha_to_one",
                "steps_offset", "prediction_type", "thresholding", "dynamic_thresholding_ratio",
                "sample_max_value", "timestep_spacing", "timestep_scaling", "rescale_betas_zero_snr",
            ],
        }
    }
}

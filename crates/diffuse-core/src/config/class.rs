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
}

impl SchedulerClass {
    pub const ALL: [SchedulerClass; 12] = [
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
        }
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
            SchedulerClass::EdmEuler | SchedulerClass::EdmDpmSolverMultistep
        )
    }

    /// Whether the class plans on a β schedule (ᾱ), i.e. neither flow matching nor EDM.
    pub fn has_beta_schedule(self) -> bool {
        !self.is_flow() && !self.is_edm()
    }
}

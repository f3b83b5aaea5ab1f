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
}

impl SchedulerClass {
    pub const ALL: [SchedulerClass; 10] = [
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
}

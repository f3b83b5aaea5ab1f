//! The string options of a scheduler config as enums, with diffusers' names (the string
//! arguments of the `scheduling_*.py` constructors: `beta_schedule`, `timestep_spacing`, …).

use crate::error::{Error, Result};

/// How β_t is laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    /// Nichol & Dhariwal's cosine ᾱ(t), β capped at 0.999.
    SquaredCosCapV2,
    Sigmoid,
    Laplace,
    Exp,
}

impl BetaSchedule {
    pub const NAMES: [&'static str; 6] = [
        "linear",
        "scaled_linear",
        "squaredcos_cap_v2",
        "sigmoid",
        "laplace",
        "exp",
    ];
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
            BetaSchedule::Sigmoid => "sigmoid",
            BetaSchedule::Laplace => "laplace",
            BetaSchedule::Exp => "exp",
        }
    }
    pub(super) fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
            "sigmoid" => BetaSchedule::Sigmoid,
            "laplace" => BetaSchedule::Laplace,
            "exp" => BetaSchedule::Exp,
            _ => return None,
        })
    }
}

/// How inference timesteps are picked from the training timesteps (Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε.
    Epsilon,
    /// The clean sample x₀.
    Sample,
    /// v = α ε − σ x₀ (Salimans & Ho 2022).
    VPrediction,
    /// The rectified-flow velocity ε − x₀ (flow matching).
    Flow,
}

impl PredictionType {
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::Sample => "sample",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Flow => "flow_prediction",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "epsilon" => PredictionType::Epsilon,
            "sample" | "original_sample" => PredictionType::Sample,
            "v_prediction" => PredictionType::VPrediction,
            "flow_prediction" => PredictionType::Flow,
            _ => {
                return Err(Error::config(
                    "prediction_type",
                    format!(
                    "unknown value {s:?}; allowed: epsilon, sample, v_prediction, flow_prediction"
                ),
                ))
            }
        })
    }
}

/// DDPM posterior variance choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
}

/// Where Euler/DPM/UniPC put the last sigma.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// DPM-Solver flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// Data-prediction DPM-Solver++ (Lu et al. 2022b).
    DpmSolverPP,
    /// Noise-prediction DPM-Solver.
    DpmSolver,
    /// Stochastic DPM-Solver++ (draws noise each step).
    SdeDpmSolverPP,
}

/// Second-order update rule of DPM-Solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmSolverType {
    Midpoint,
    Heun,
}

/// UniPC's B(h) choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcSolverType {
    Bh1,
    Bh2,
}

/// How the EDM schedulers space σ (`sigma_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaSchedule {
    /// Karras et al.'s ρ-ramp between σ_max and σ_min.
    Karras,
    /// log σ evenly spaced (k-diffusion's `get_sigmas_exponential`).
    Exponential,
}

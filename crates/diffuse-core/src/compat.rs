//! Which sampler can drive which model: the one place that decides, for a sampler name and a
//! model's training objective, whether diffusers runs it as is, whether diffuse converts the
//! model's output for it, or whether it is refused.
//!
//! Follows diffusers 0.42.1: the `prediction_type` values each `schedulers/scheduling_*.py`
//! accepts in `step`/`convert_model_output`, the flow-sigma branch of
//! `scheduling_dpmsolver_multistep.py` and `scheduling_unipc_multistep.py` (`use_flow_sigmas`,
//! `flow_shift`, `prediction_type = "flow_prediction"`), and `ConfigMixin.extract_init_dict`
//! (`configuration_utils.py`) for what `Scheduler.from_config(model_config)` carries over from a
//! model's scheduler config to another class.
//!
//! | objective | what the sampler sees |
//! |---|---|
//! | ε, x₀, v | the β schedule (VP): x_t = √ᾱ x₀ + √(1 − ᾱ) ε |
//! | flow | rectified flow: x_σ = (1 − σ) x₀ + σ ε, output u = ε − x₀ |
//! | edm | x_σ = x₀ + σ ε, network preconditioned (`crate::edm`): x₀ = c_skip x + c_out F |
//!
//! [`resolve_sampler`] turns a name and a model's [`SchedulerConfig`] into the config to plan
//! with; [`compatible_samplers`] lists every name's [`Outcome`] for an objective;
//! [`table_markdown`] renders the whole table.

use crate::config::{PredictionType, SchedulerClass, SchedulerConfig};
use serde_json::{Map, Value};
use std::fmt;

/// What a model was trained to predict, and on which noise process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Objective {
    /// ε on the β schedule.
    Epsilon,
    /// x₀ on the β schedule (diffusers `sample`).
    Sample,
    /// v = α ε − σ x₀ on the β schedule.
    VPrediction,
    /// The rectified-flow velocity ε − x₀ on flow-matching σ.
    Flow,
    /// EDM's preconditioned F (Karras et al. 2022) on x_σ = x₀ + σ ε: the EDM schedulers'
    /// models (diffusers calls F `epsilon` there).
    Edm,
}

impl Objective {
    pub const ALL: [Objective; 5] = [
        Objective::Epsilon,
        Objective::Sample,
        Objective::VPrediction,
        Objective::Flow,
        Objective::Edm,
    ];

    /// The objective of a model whose scheduler config is `config` (its `prediction_type`; the
    /// FlowMatch classes and DPM-Solver/UniPC with flow σ and `flow_prediction` are flow models;
    /// an EDM class's model is an EDM model whatever its `prediction_type`).
    pub fn of(config: &SchedulerConfig) -> Objective {
        if config.class.is_edm() {
            return Objective::Edm;
        }
        match config
            .model_prediction_type
            .unwrap_or(config.prediction_type)
        {
            PredictionType::Epsilon => Objective::Epsilon,
            PredictionType::Sample => Objective::Sample,
            PredictionType::VPrediction => Objective::VPrediction,
            PredictionType::Flow => Objective::Flow,
        }
    }

    /// The diffusers `prediction_type` of the objective (EDM's F is `epsilon` there).
    pub fn prediction_type(self) -> PredictionType {
        match self {
            Objective::Epsilon | Objective::Edm => PredictionType::Epsilon,
            Objective::Sample => PredictionType::Sample,
            Objective::VPrediction => PredictionType::VPrediction,
            Objective::Flow => PredictionType::Flow,
        }
    }

    /// Short name: `epsilon`, `sample`, `v_prediction`, `flow`, `edm`.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Epsilon => "epsilon",
            Objective::Sample => "sample",
            Objective::VPrediction => "v_prediction",
            Objective::Flow => "flow",
            Objective::Edm => "edm",
        }
    }

    /// For messages: `ε-prediction (epsilon)`, ..., `flow matching (flow_prediction)`.
    pub fn describe(self) -> &'static str {
        match self {
            Objective::Epsilon => "ε-prediction (epsilon)",
            Objective::Sample => "x₀-prediction (sample)",
            Objective::VPrediction => "v-prediction (v_prediction)",
            Objective::Flow => "flow matching (flow_prediction)",
            Objective::Edm => "EDM-preconditioned (edm)",
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The sampler names users type, in table order. A diffusers class name means the same as its
/// short name (`EulerDiscreteScheduler` is `euler`).
pub const SAMPLERS: [&str; 14] = [
    "ddpm",
    "ddim",
    "plms",
    "euler",
    "euler_a",
    "heun",
    "dpmpp_2m",
    "unipc",
    "lcm",
    "flow_euler",
    "flow_heun",
    "edm_euler",
    "edm_dpmpp_2m",
    "edm_heun",
];

/// How one sampler drives one objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Run as diffusers runs it: the class of that name accepts the model's prediction type
    /// (for a flow model: the flow-sigma variant, or the FlowMatch class of that name).
    Supported,
    /// The class does not accept the model's output type, but the output is turned into one it
    /// takes, exactly, under the schedule the sample is on (see [`Conversion`]).
    Converted(Conversion),
    /// No correct way to run it; the reason says why.
    Refused(&'static str),
}

/// A model output turned into another prediction type at every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// The model's output type.
    pub from: PredictionType,
    /// What the sampler's diffusers class takes.
    pub to: PredictionType,
}

impl Conversion {
    /// The formula, for the table.
    pub fn describe(self) -> String {
        let sym = |p: PredictionType| match p {
            PredictionType::Epsilon => "ε",
            PredictionType::Sample => "x₀",
            PredictionType::VPrediction => "v",
            PredictionType::Flow => "u",
        };
        format!(
            "{} → {} at every step, exact under the β schedule (x_t = α x₀ + σ ε at the step's ᾱ)",
            sym(self.from),
            sym(self.to)
        )
    }
}

/// One cell of the table: a sampler name on an objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// The short name (`dpmpp_2m`).
    pub sampler: &'static str,
    pub objective: Objective,
    /// The scheduler class it runs as (None when refused).
    pub class: Option<SchedulerClass>,
    pub outcome: Outcome,
}

impl Cell {
    /// Whether the sampler can drive the objective (supported or converted).
    pub fn works(&self) -> bool {
        !matches!(self.outcome, Outcome::Refused(_))
    }

    /// How the cell reads in the table.
    pub fn describe(&self) -> String {
        match (self.outcome, self.class) {
            (Outcome::Supported, Some(class)) if self.objective == Objective::Edm => {
                format!("yes: {}", class.class_name())
            }
            (Outcome::Supported, Some(class)) if self.objective == Objective::Flow => {
                if class.is_flow() {
                    format!("yes: {}", class.class_name())
                } else {
                    format!(
                        "yes: {} with use_flow_sigmas, flow_shift = the model's shift",
                        class.class_name()
                    )
                }
            }
            (Outcome::Supported, _) => "yes".to_string(),
            (Outcome::Converted(c), _) => format!("converted: {}", c.describe()),
            (Outcome::Refused(why), _) => format!("refused: {why}"),
        }
    }
}

/// Why a sampler was not resolved. Every message is one line that names the sampler, the
/// model's objective and the samplers that work for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    /// Not a sampler name nor a diffusers scheduler class.
    #[error("unknown sampler `{sampler}` for this {objective} model; samplers that work: {}", .working.join(", "))]
    Unknown {
        sampler: String,
        objective: Objective,
        working: Vec<&'static str>,
    },
    /// The sampler cannot drive the model.
    #[error("sampler `{sampler}` cannot drive this {objective} model: {reason}; samplers that work: {}", .working.join(", "))]
    Refused {
        sampler: String,
        objective: Objective,
        reason: &'static str,
        working: Vec<&'static str>,
    },
    /// The model's scheduler config does not carry over to the sampler's class (a key the
    /// class cannot take).
    #[error("sampler `{sampler}` for this {objective} model: {message}; samplers that work: {}", .working.join(", "))]
    Config {
        sampler: String,
        objective: Objective,
        message: String,
        working: Vec<&'static str>,
    },
}

impl CompatError {
    /// The sampler as the user gave it.
    pub fn sampler(&self) -> &str {
        match self {
            CompatError::Unknown { sampler, .. }
            | CompatError::Refused { sampler, .. }
            | CompatError::Config { sampler, .. } => sampler,
        }
    }

    /// The samplers that work for the model.
    pub fn working(&self) -> &[&'static str] {
        match self {
            CompatError::Unknown { working, .. }
            | CompatError::Refused { working, .. }
            | CompatError::Config { working, .. } => working,
        }
    }

    /// The model's objective.
    pub fn objective(&self) -> Objective {
        match self {
            CompatError::Unknown { objective, .. }
            | CompatError::Refused { objective, .. }
            | CompatError::Config { objective, .. } => *objective,
        }
    }
}

/// The short name of a sampler name or diffusers class name; None if it is neither.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    SchedulerClass::ALL
        .into_iter()
        .find(|c| c.class_name() == name || c.short_name() == name)
        .map(SchedulerClass::short_name)
}

/// The cell of `sampler` (a short name from [`SAMPLERS`]) on `objective`; None for another name.
pub fn cell(sampler: &str, objective: Objective) -> Option<Cell> {
    use Objective as O;
    use SchedulerClass as C;
    let sampler = canonical_name(sampler)?;
    let class = SchedulerClass::parse(sampler).ok()?;
    let flow = objective == O::Flow;
    let edm = objective == O::Edm;
    let (class, outcome) = match class {
        // EDM: only the EDM classes precondition the network; euler and dpmpp_2m name them.
        C::EdmEuler | C::EdmDpmSolverMultistep | C::EdmHeun if edm => {
            (Some(class), Outcome::Supported)
        }
        C::Euler if edm => (Some(C::EdmEuler), Outcome::Supported),
        C::Heun if edm => (Some(C::EdmHeun), Outcome::Supported),
        C::DpmSolverMultistep if edm => (Some(C::EdmDpmSolverMultistep), Outcome::Supported),
        _ if edm => (
            None,
            Outcome::Refused(
                "an EDM model takes c_in·x at time ¼ ln σ and outputs F, which only the EDM \
                 samplers feed and read",
            ),
        ),
        C::EdmEuler | C::EdmDpmSolverMultistep | C::EdmHeun => (
            None,
            Outcome::Refused(
                "it preconditions an EDM network (c_in, c_noise, c_skip, c_out), and this model \
                 is not one",
            ),
        ),
        // FlowMatch: the velocity only.
        C::FlowMatchEuler | C::FlowMatchHeun if flow => (Some(class), Outcome::Supported),
        C::FlowMatchEuler | C::FlowMatchHeun => (
            None,
            Outcome::Refused(
                "it integrates a flow-matching velocity, and this model predicts on a β schedule",
            ),
        ),
        // The names euler/heun are diffusers' FlowMatch Euler/Heun on a flow model.
        C::Euler if flow => (Some(C::FlowMatchEuler), Outcome::Supported),
        C::Heun if flow => (Some(C::FlowMatchHeun), Outcome::Supported),
        // DPM-Solver++ and UniPC on flow σ (use_flow_sigmas, flow_prediction).
        C::DpmSolverMultistep | C::UniPcMultistep => (Some(class), Outcome::Supported),
        C::Ddpm if flow => (
            None,
            Outcome::Refused("DDPMScheduler takes epsilon, sample or v_prediction, not flow_prediction"),
        ),
        C::Ddim if flow => (
            None,
            Outcome::Refused("DDIMScheduler takes epsilon, sample or v_prediction, not flow_prediction"),
        ),
        C::Pndm if flow => (
            None,
            Outcome::Refused("PNDMScheduler takes epsilon or v_prediction, not flow_prediction"),
        ),
        C::Lcm if flow => (
            None,
            Outcome::Refused("LCMScheduler takes epsilon, sample or v_prediction, not flow_prediction"),
        ),
        C::EulerAncestral if flow => (
            None,
            Outcome::Refused(
                "EulerAncestralDiscreteScheduler takes epsilon or v_prediction, not flow_prediction",
            ),
        ),
        // diffusers' PNDM and Euler-ancestral refuse `sample`: x₀ → ε is exact at the step.
        C::Pndm | C::EulerAncestral if objective == O::Sample => (
            Some(class),
            Outcome::Converted(Conversion {
                from: PredictionType::Sample,
                to: PredictionType::Epsilon,
            }),
        ),
        C::Ddpm | C::Ddim | C::Pndm | C::Euler | C::EulerAncestral | C::Heun | C::Lcm => {
            (Some(class), Outcome::Supported)
        }
    };
    Some(Cell {
        sampler,
        objective,
        class,
        outcome,
    })
}

/// Every sampler name with its outcome on `objective`, in [`SAMPLERS`] order.
pub fn compatible_samplers(objective: Objective) -> Vec<Cell> {
    SAMPLERS
        .iter()
        .map(|s| cell(s, objective).expect("known name"))
        .collect()
}

/// The names that can drive `objective` (supported or converted).
pub fn working_samplers(objective: Objective) -> Vec<&'static str> {
    compatible_samplers(objective)
        .into_iter()
        .filter(Cell::works)
        .map(|c| c.sampler)
        .collect()
}

/// The whole table as markdown: one row per sampler, one column per objective, then the
/// conversions and refusals spelled out.
pub fn table_markdown() -> String {
    let mut s = String::from(
        "| sampler | ε (`epsilon`) | x₀ (`sample`) | v (`v_prediction`) | flow (`flow_prediction`) | EDM (`edm`) |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut notes = Vec::new();
    for name in SAMPLERS {
        s.push_str(&format!("| `{name}` |"));
        for o in Objective::ALL {
            let c = cell(name, o).expect("known name");
            let short = match (c.outcome, c.class) {
                (Outcome::Supported, Some(class)) if o == Objective::Flow && !class.is_flow() => {
                    format!("yes ({}, flow σ)", class.class_name())
                }
                (Outcome::Supported, Some(class))
                    if o == Objective::Flow
                        || (o == Objective::Edm && class.short_name() != name) =>
                {
                    format!("yes ({})", class.class_name())
                }
                (Outcome::Supported, _) => "yes".to_string(),
                (Outcome::Converted(_), _) => {
                    notes.push(format!("`{name}` on {}: {}", o.name(), c.describe()));
                    "converted¹".to_string()
                }
                (Outcome::Refused(_), _) => {
                    notes.push(format!("`{name}` on {}: {}", o.name(), c.describe()));
                    "no".to_string()
                }
            };
            s.push_str(&format!(" {short} |"));
        }
        s.push('\n');
    }
    s.push_str(
        "\nA diffusers class name means the same as its short name. \"yes\": the diffusers class \
         of that name runs the model's prediction type as diffusers does; on a flow model \
         `dpmpp_2m`/`unipc` run with `use_flow_sigmas`, `prediction_type = \"flow_prediction\"` \
         and `flow_shift` = the model's `shift`, and `euler`/`heun` are the FlowMatch \
         Euler/Heun samplers; on an EDM model `euler` and `dpmpp_2m` are EDMEulerScheduler and \
         EDMDPMSolverMultistepScheduler, and `heun` is `edm_heun` (EDM's Heun sampler, Karras \
         et al. 2022 Alg. 1, which diffusers lacks: diffuse's own, on EDMEulerScheduler's σ).\n\n¹ diffusers' PNDMScheduler and EulerAncestralDiscreteScheduler refuse \
         `sample`; diffuse turns the model's x₀ into the ε they take.\n\n",
    );
    for n in notes {
        s.push_str(&format!("- {n}\n"));
    }
    s
}

/// The scheduler config that runs `sampler` (a name from [`SAMPLERS`] or a diffusers class
/// name) on the model whose scheduler config is `model`, or why it cannot.
///
/// - The model's own class: its config, unchanged.
/// - Another class: the model's config object (`model.given`) carried over as diffusers'
///   `Scheduler.from_config(model_config)` does (keys of the model's class that the new class
///   does not take are dropped, keys diffusers marked `_use_default_values` too), with the
///   training keys written from `model` (`num_train_timesteps`, the β schedule and
///   `prediction_type` for ε/x₀/v models; for flow models `num_train_timesteps` and the shift:
///   `shift` for the FlowMatch classes, `use_flow_sigmas`, `flow_shift` and
///   `prediction_type = "flow_prediction"` for DPM-Solver++/UniPC).
/// - A converted cell: the class's own prediction type, with `model_prediction_type` set to the
///   model's, so that [`crate::sampler::Sampler::step`] converts each output.
pub fn resolve_sampler(
    sampler: &str,
    model: &SchedulerConfig,
) -> Result<SchedulerConfig, CompatError> {
    let objective = Objective::of(model);
    let working = || working_samplers(objective);
    let Some(cell) = cell(sampler, objective) else {
        return Err(CompatError::Unknown {
            sampler: sampler.to_string(),
            objective,
            working: working(),
        });
    };
    let class = match (cell.outcome, cell.class) {
        (Outcome::Refused(reason), _) => {
            return Err(CompatError::Refused {
                sampler: sampler.to_string(),
                objective,
                reason,
                working: working(),
            })
        }
        (_, class) => class.expect("a working cell names its class"),
    };
    if class == model.class && model.model_prediction_type.is_none() {
        return Ok(model.clone());
    }
    let map = carried_over(model, class, objective, cell.outcome);
    let mut config = SchedulerConfig::from_json_map(&map).map_err(|e| CompatError::Config {
        sampler: sampler.to_string(),
        objective,
        message: e.to_string(),
        working: working(),
    })?;
    if let Outcome::Converted(c) = cell.outcome {
        config.model_prediction_type = Some(c.from);
    }
    Ok(config)
}

/// The model's config object as `class` takes it (see [`resolve_sampler`]).
fn carried_over(
    model: &SchedulerConfig,
    class: SchedulerClass,
    objective: Objective,
    outcome: Outcome,
) -> Map<String, Value> {
    let defaulted: Vec<&str> = match model.given.get("_use_default_values") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let (from_keys, to_keys) = (
        model.class.diffusers_init_keys(),
        class.diffusers_init_keys(),
    );
    let mut map: Map<String, Value> = model
        .given
        .iter()
        .filter(|(k, _)| !k.starts_with('_') && !defaulted.contains(&k.as_str()))
        .filter(|(k, _)| !from_keys.contains(&k.as_str()) || to_keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    map.insert("_class_name".into(), class.class_name().into());
    map.insert(
        "num_train_timesteps".into(),
        model.num_train_timesteps.into(),
    );
    // DDPM's variance types other than the learned ones mean "none" to DPM-Solver.
    if class != SchedulerClass::Ddpm
        && matches!(map.get("variance_type"), Some(Value::String(s)) if !s.starts_with("learned"))
    {
        map.remove("variance_type");
    }
    if objective == Objective::Edm {
        // The preconditioning and σ range are the model's; the rest is the sampler's own.
        let (lo, hi) = (model.sigma_min, model.sigma_max);
        map.insert("sigma_min".into(), lo.map_or(Value::Null, Value::from));
        map.insert("sigma_max".into(), hi.map_or(Value::Null, Value::from));
        map.insert("sigma_data".into(), model.sigma_data.into());
        map.insert(
            "prediction_type".into(),
            model.prediction_type.name().into(),
        );
    } else if objective == Objective::Flow {
        let shift = if model.class.is_flow() {
            model.shift
        } else {
            model.flow_shift
        };
        for k in ["shift", "flow_shift", "use_flow_sigmas", "prediction_type"] {
            map.remove(k);
        }
        if class.is_flow() {
            map.insert("shift".into(), shift.into());
        } else {
            map.insert("use_flow_sigmas".into(), true.into());
            map.insert("flow_shift".into(), shift.into());
            map.insert("prediction_type".into(), "flow_prediction".into());
        }
    } else {
        map.insert("beta_start".into(), model.beta_start.into());
        map.insert("beta_end".into(), model.beta_end.into());
        map.insert("beta_schedule".into(), model.beta_schedule.name().into());
        map.insert(
            "trained_betas".into(),
            model
                .trained_betas
                .as_ref()
                .map_or(Value::Null, |b| b.clone().into()),
        );
        map.insert(
            "rescale_betas_zero_snr".into(),
            model.rescale_betas_zero_snr.into(),
        );
        let pred = match outcome {
            Outcome::Converted(c) => c.to,
            _ => objective.prediction_type(),
        };
        map.insert("prediction_type".into(), pred.name().into());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::FnDenoiser;
    use crate::rng::SeededNoise;
    use crate::sampler::{sample, Sampler};
    use crate::schedule::{interp, NoiseSchedule};

    #[test]
    fn docs_samplers_md_holds_this_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/samplers.md");
        let doc = std::fs::read_to_string(path).unwrap();
        assert!(
            doc.contains(&table_markdown()),
            "docs/samplers.md is stale: paste the output of `diffuse samplers` into it"
        );
    }
    use candle_core::{Device, Tensor};
    use std::ops::ControlFlow;

    fn model(json: &str) -> SchedulerConfig {
        SchedulerConfig::from_json_str(json).unwrap()
    }

    /// A model config of each objective, as a training run writes one.
    fn model_of(o: Objective) -> SchedulerConfig {
        match o {
            Objective::Flow => model(
                r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}"#,
            ),
            Objective::Edm => model(
                r#"{"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "prediction_type": "epsilon"}"#,
            ),
            _ => model(&format!(
                r#"{{"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "{}", "variance_type": "fixed_small", "clip_sample": false}}"#,
                o.prediction_type().name()
            )),
        }
    }

    /// The table, written out: S supported, C converted, R refused (columns ε, x₀, v, flow, EDM).
    const EXPECTED: [(&str, [char; 5]); 14] = [
        ("ddpm", ['S', 'S', 'S', 'R', 'R']),
        ("ddim", ['S', 'S', 'S', 'R', 'R']),
        ("plms", ['S', 'C', 'S', 'R', 'R']),
        ("euler", ['S', 'S', 'S', 'S', 'S']),
        ("euler_a", ['S', 'C', 'S', 'R', 'R']),
        ("heun", ['S', 'S', 'S', 'S', 'S']),
        ("dpmpp_2m", ['S', 'S', 'S', 'S', 'S']),
        ("unipc", ['S', 'S', 'S', 'S', 'R']),
        ("lcm", ['S', 'S', 'S', 'R', 'R']),
        ("flow_euler", ['R', 'R', 'R', 'S', 'R']),
        ("flow_heun", ['R', 'R', 'R', 'S', 'R']),
        ("edm_euler", ['R', 'R', 'R', 'R', 'S']),
        ("edm_dpmpp_2m", ['R', 'R', 'R', 'R', 'S']),
        ("edm_heun", ['R', 'R', 'R', 'R', 'S']),
    ];

    #[test]
    fn every_cell_has_its_outcome() {
        assert_eq!(EXPECTED.map(|(n, _)| n), SAMPLERS);
        for (name, row) in EXPECTED {
            for (o, want) in Objective::ALL.into_iter().zip(row) {
                let c = cell(name, o).unwrap();
                let got = match c.outcome {
                    Outcome::Supported => 'S',
                    Outcome::Converted(_) => 'C',
                    Outcome::Refused(_) => 'R',
                };
                assert_eq!(got, want, "{name} on {o:?}");
                assert_eq!(c.class.is_some(), c.works(), "{name} on {o:?}");
                // A diffusers class name is the same cell as its short name.
                let class = SchedulerClass::parse(name).unwrap();
                assert_eq!(cell(class.class_name(), o), Some(c));
            }
        }
        let flow = |n| cell(n, Objective::Flow).unwrap().class.unwrap();
        assert_eq!(flow("euler"), SchedulerClass::FlowMatchEuler);
        assert_eq!(flow("heun"), SchedulerClass::FlowMatchHeun);
        assert_eq!(flow("dpmpp_2m"), SchedulerClass::DpmSolverMultistep);
        assert_eq!(flow("unipc"), SchedulerClass::UniPcMultistep);
        assert_eq!(
            working_samplers(Objective::Flow),
            [
                "euler",
                "heun",
                "dpmpp_2m",
                "unipc",
                "flow_euler",
                "flow_heun"
            ]
        );
        assert_eq!(working_samplers(Objective::Sample).len(), 9);
        assert_eq!(cell("dpm++", Objective::Epsilon), None);
    }

    #[test]
    fn every_cell_resolves_or_is_refused_in_one_line() {
        for o in Objective::ALL {
            let m = model_of(o);
            assert_eq!(Objective::of(&m), o);
            let working = working_samplers(o);
            for c in compatible_samplers(o) {
                match (resolve_sampler(c.sampler, &m), c.outcome) {
                    (Ok(cfg), Outcome::Refused(_)) => {
                        panic!("{} on {o:?} resolved to {:?}", c.sampler, cfg.class)
                    }
                    (Ok(cfg), outcome) => {
                        assert_eq!(Some(cfg.class), c.class, "{} on {o:?}", c.sampler);
                        assert_eq!(Objective::of(&cfg), o, "{} on {o:?}", c.sampler);
                        match outcome {
                            Outcome::Converted(conv) => {
                                assert_eq!(cfg.prediction_type, conv.to);
                                assert_eq!(cfg.model_prediction_type, Some(conv.from));
                            }
                            _ => assert_eq!(cfg.model_prediction_type, None),
                        }
                        assert_eq!(cfg.num_train_timesteps, 1000);
                        if o == Objective::Flow {
                            assert!(cfg.uses_flow_sigmas(), "{}", c.sampler);
                            let shift = if cfg.class.is_flow() {
                                cfg.shift
                            } else {
                                cfg.flow_shift
                            };
                            assert_eq!(shift, 3.0, "{}", c.sampler);
                        } else if o == Objective::Edm {
                            assert!(cfg.class.is_edm(), "{}", c.sampler);
                            assert_eq!((cfg.sigma_min, cfg.sigma_max), (Some(0.002), Some(80.0)));
                            assert_eq!(cfg.sigma_data, 0.5);
                        } else {
                            assert_eq!(cfg.beta_schedule.name(), "scaled_linear");
                            assert_eq!((cfg.beta_start, cfg.beta_end), (0.00085, 0.012));
                        }
                        let s = Sampler::new(&cfg, 10).unwrap();
                        assert!(s.timesteps().len() >= 10, "{}", c.sampler);
                    }
                    (Err(e), Outcome::Refused(reason)) => {
                        let msg = e.to_string();
                        assert!(!msg.contains('\n'), "{msg}");
                        assert!(msg.contains(&format!("`{}`", c.sampler)), "{msg}");
                        assert!(msg.contains(o.describe()) && msg.contains(reason), "{msg}");
                        assert!(
                            msg.ends_with(&format!("samplers that work: {}", working.join(", "))),
                            "{msg}"
                        );
                        assert_eq!(e.working(), working.as_slice());
                        assert_eq!((e.sampler(), e.objective()), (c.sampler, o));
                    }
                    (Err(e), _) => panic!("{} on {o:?}: {e}", c.sampler),
                }
            }
        }
    }

    #[test]
    fn the_flow_model_in_the_issue_gets_flow_samplers() {
        // The quick-start model: FlowMatchEuler, shift 1, no prediction_type key.
        let m = model(
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}"#,
        );
        let dpm = resolve_sampler("dpmpp_2m", &m).unwrap();
        assert_eq!(dpm.class, SchedulerClass::DpmSolverMultistep);
        assert!(dpm.use_flow_sigmas && dpm.prediction_type == PredictionType::Flow);
        assert!(dpm.ignored_keys.is_empty(), "{:?}", dpm.ignored_keys);
        let uni = resolve_sampler("UniPCMultistepScheduler", &m).unwrap();
        assert!(uni.use_flow_sigmas && uni.prediction_type == PredictionType::Flow);
        // The model's own scheduler comes back as it is.
        let own = resolve_sampler("euler", &m).unwrap();
        assert_eq!(own.class, SchedulerClass::FlowMatchEuler);
        assert_eq!(own.given, m.given);
        let e = resolve_sampler("ddim", &m).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sampler `ddim` cannot drive this flow matching (flow_prediction) model: \
             DDIMScheduler takes epsilon, sample or v_prediction, not flow_prediction; \
             samplers that work: euler, heun, dpmpp_2m, unipc, flow_euler, flow_heun"
        );
        let e = resolve_sampler("lms", &m).unwrap_err();
        assert!(matches!(e, CompatError::Unknown { .. }), "{e}");
        assert!(e.to_string().starts_with("unknown sampler `lms`"), "{e}");
        // A flow model saved with DPM-Solver++ on flow σ (flow_shift) back to FlowMatch (shift).
        let wan = model(
            r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true, "prediction_type": "flow_prediction", "flow_shift": 5.0, "solver_order": 3}"#,
        );
        let heun = resolve_sampler("flow_heun", &wan).unwrap();
        assert_eq!(
            (heun.class, heun.shift),
            (SchedulerClass::FlowMatchHeun, 5.0)
        );
        let dpm = resolve_sampler("dpmpp_2m", &wan).unwrap();
        assert_eq!((dpm.flow_shift, dpm.solver_order), (5.0, 3));
    }

    #[test]
    fn model_keys_carry_over_as_diffusers_from_config_does() {
        let m = model(
            r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 500, "beta_schedule": "squaredcos_cap_v2",
                "prediction_type": "v_prediction", "variance_type": "fixed_small_log", "clip_sample": false,
                "timestep_spacing": "trailing", "steps_offset": 1, "num_inference_steps": 4, "my_key": 1,
                "_use_default_values": ["thresholding"], "thresholding": false}"#,
        );
        let ddim = resolve_sampler("ddim", &m).unwrap();
        assert_eq!(ddim.num_train_timesteps, 500);
        assert_eq!(ddim.prediction_type, PredictionType::VPrediction);
        assert!(!ddim.clip_sample);
        assert_eq!(ddim.steps_offset, 1);
        assert_eq!(ddim.num_inference_steps, Some(4));
        assert_eq!(ddim.ignored_keys, ["my_key"]);
        // DDPM's variance_type means nothing to DPM-Solver; PNDM takes neither it nor clip_sample.
        let dpm = resolve_sampler("dpmpp_2m", &m).unwrap();
        assert_eq!(dpm.beta_schedule.name(), "squaredcos_cap_v2");
        let pndm = resolve_sampler("plms", &m).unwrap();
        assert!(
            !pndm.given.contains_key("clip_sample") && !pndm.given.contains_key("variance_type")
        );
        // Keys of the model's class that the new class lacks are dropped (Euler's Karras σ for
        // Euler-ancestral), the ones both have kept.
        let k = model(r#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true}"#);
        assert!(resolve_sampler("heun", &k).unwrap().use_karras_sigmas);
        assert!(!resolve_sampler("euler_a", &k).unwrap().use_karras_sigmas);
        // A carried value the new class refuses is a one-line error naming the sampler.
        let mut bad = m.clone();
        bad.given.insert("solver_order".into(), 4.into());
        let e = resolve_sampler("unipc", &bad).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CompatError::Config { .. }), "{msg}");
        assert!(
            !msg.contains('\n') && msg.starts_with("sampler `unipc`"),
            "{msg}"
        );
        assert!(
            msg.contains("solver_order") && msg.contains("v-prediction"),
            "{msg}"
        );
        assert!(msg.ends_with(&working_samplers(Objective::VPrediction).join(", ")));
    }

    /// The analytic Gaussian-data posterior mean (as the parity tests use) in `pred` form, with
    /// α, σ of the VP x_t the sampler feeds: σ(t) interpolated over the training σ.
    fn gaussian(
        schedule: &NoiseSchedule,
        pred: PredictionType,
    ) -> impl Fn(&Tensor, f64) -> crate::Result<Tensor> + '_ {
        let sigmas = schedule.sigmas();
        move |x: &Tensor, t: f64| {
            let s = interp(t, &sigmas);
            let (a, b) = (1.0 / (1.0 + s * s).sqrt(), s / (1.0 + s * s).sqrt());
            let (mu, s2) = (0.3, 0.25);
            let x0 = ((x - a * mu)? * (a * s2 / (a * a * s2 + b * b)))? + mu;
            let x0 = x0?;
            Ok(match pred {
                PredictionType::Sample => x0,
                _ => ((x - (&x0 * a)?)? / b)?,
            })
        }
    }

    #[test]
    fn converted_samplers_on_an_x0_model_equal_their_native_run_on_the_eps_model() {
        let eps_model = model_of(Objective::Epsilon);
        let x0_model = model_of(Objective::Sample);
        let schedule = NoiseSchedule::from_config(&eps_model).unwrap();
        let init = Tensor::randn(0f32, 1.0, (2, 1, 4, 4), &Device::Cpu).unwrap();
        let run = |cfg: &SchedulerConfig, pred| {
            let s = Sampler::new(cfg, 12).unwrap();
            let m = FnDenoiser(gaussian(&schedule, pred));
            let mut noise = SeededNoise::new(7, 2);
            sample(
                &s,
                &m,
                &init,
                &mut noise,
                &mut |_| ControlFlow::Continue(()),
            )
            .unwrap()
        };
        for name in ["plms", "euler_a"] {
            let native = run(
                &resolve_sampler(name, &eps_model).unwrap(),
                PredictionType::Epsilon,
            );
            let conv_cfg = resolve_sampler(name, &x0_model).unwrap();
            let converted = run(&conv_cfg, PredictionType::Sample);
            let diff = (&native - &converted)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            let diff: f32 = diff.to_scalar().unwrap();
            assert!(diff < 1e-4, "{name}: {diff}");
            // Without the conversion the x₀ output read as ε is far off.
            let mut wrong = conv_cfg.clone();
            wrong.model_prediction_type = None;
            let bad = run(&wrong, PredictionType::Sample);
            let d: f32 = (&native - &bad)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d > 0.1, "{name}: {d}");
        }
    }

    #[test]
    fn the_table_renders_every_sampler() {
        let md = table_markdown();
        for name in SAMPLERS {
            assert!(md.contains(&format!("| `{name}` |")), "{name}");
        }
        assert!(md.contains("converted¹") && md.contains("x₀ → ε"));
        assert!(md.contains("yes (DPMSolverMultistepScheduler, flow σ)"));
        assert!(md.contains("yes (EDMEulerScheduler)") && md.contains("yes (EDMHeunScheduler)"));
        assert_eq!(md.lines().filter(|l| l.starts_with("| `")).count(), 14);
    }
}

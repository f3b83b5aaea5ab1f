//! diffuse-bench: `diffuse bench`, how fast this machine runs a UNet2DModel — forward at
//! several batch sizes (inference on detached tensors), one full training step (forward, MSE,
//! backward, clipping, AdamW, through [`diffuse_train::trainer::step`]) and DDIM sampling (the
//! `diffuse sample` pipeline) — with medians, min/max, images/s, peak RSS, achieved GFLOP/s
//! against the machine's peak.
//!
//! FLOPs are counted analytically from the config ([`diffuse_models::flops`]); a training step
//! counts as 3× the forward.
//!
//! `bench/run` runs this beside `bench/torch_bench.py` (the same model, weights and inputs in
//! PyTorch) and compares; [`BenchOptions::save_weights`] and [`BenchOptions::save_check`]
//! write what the PyTorch side loads.
//!
//! [`BenchOptions::dtype`] bf16 measures the low-precision paths: forward and sampling on a bf16
//! copy of the weights, the training step as `train.mixed_precision = "bf16"` runs it (bf16
//! forward over f32 master weights, f32 gradients and AdamW) — PyTorch's side under autocast.
//!
//! - [`presets`]: the built-in models and the DDIM scheduler config.
//! - [`machine`]: the CPU's peak rate, peak RSS.
//! - [`timing`]: medians and the timed loop.
//! - [`mod@run`]: the benchmark itself.
//! - [`report`]: the JSON report and its table.

pub mod machine;
pub mod presets;
pub mod report;
pub mod run;
pub mod timing;

pub use machine::{machine_peak, peak_rss_bytes, reset_peak_rss, MachinePeak};
pub use presets::{preset, scheduler_config_json, PRESETS};
pub use report::{BenchReport, Measurement};
pub use run::{run, tune_convs, BenchOptions, Phase, CHECK_STEPS};

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--preset` names no built-in model.
    #[error("unknown bench preset {0:?}; allowed: {allowed}", allowed = PRESETS.map(|p| p.0).join(", "))]
    UnknownPreset(String),
    /// `--only` names no measurement.
    #[error("unknown measurement {0:?}; allowed: forward, train, sample")]
    UnknownPhase(String),
    #[error("bench measures unconditional models: drop num_class_embeds/class_embed_type")]
    ClassConditional,
    #[error("the model config has no sample_size: bench needs one")]
    NoSampleSize,
    #[error("bench --dtype {0:?}: allowed: f32, bf16")]
    DType(candle_core::DType),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Core(#[from] diffuse_core::Error),
    #[error(transparent)]
    Data(#[from] diffuse_data::Error),
    #[error(transparent)]
    Model(#[from] diffuse_models::Error),
    #[error(transparent)]
    Train(#[from] diffuse_train::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

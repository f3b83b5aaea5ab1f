//! diffuse-train: the pieces of a training step, each equal to its PyTorch/diffusers twin.
//!
//! - [`optim`]: AdamW (`torch.optim.AdamW`) with named, checkpointable state, and global-norm
//!   gradient clipping (`torch.nn.utils.clip_grad_norm_`).
//! - [`lr`]: diffusers' `get_scheduler` curves (constant, warmup, linear, cosine).
//! - [`ema`]: diffusers' `EMAModel` (decay warmup, `update_after_step`, min/max decay).
//! - [`objective`]: the loss of a batch (ε/x₀/v, Min-SNR-γ, flow matching, CFG label dropout)
//!   with a checkpointable RNG.
//! - [`progressive`]: progressive distillation (Salimans & Ho 2022) of a (guided) teacher into
//!   a student with half its DDIM steps (`[distill]`).
//! - [`quality`]: PSNR and SSIM of reconstructions (VAE evaluation).
//! - [`eval_hook`]: `[eval]`, classifier/Inception metrics of EMA samples every N steps.
//! - [`tensorboard`]: event files (scalars, sample grids) that `tensorboard` reads.
//! - [`trainer`]: the loop of `diffuse train` (TOML config, atomic checkpoints, exact resume).
//! - [`amp`]: mixed precision (`train.mixed_precision` = bf16/fp16: low-precision forward over
//!   f32 master weights, fp16 loss scaling as `torch.cuda.amp.GradScaler`).
//! - [`dist`]: data-parallel training (torch DDP/torchrun): the `Collective` process group
//!   (threads, TCP, NCCL), batch sharding, the torchrun environment.

pub mod amp;
pub mod consistency;
pub mod dist;
pub mod ema;
pub mod eval_hook;
pub mod lr;
pub mod objective;
pub mod optim;
pub mod phema;
pub mod progressive;
pub mod quality;
pub mod reflow;
pub mod teacher;
pub mod tensorboard;
pub mod text;
pub mod trainer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Core(#[from] diffuse_core::Error),
    #[error(transparent)]
    Model(#[from] diffuse_models::Error),
    /// The output folder is another process's (its lock file names it).
    #[error(transparent)]
    Lock(#[from] diffuse_data::lock::LockError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error on `path` as [`Error::Invalid`] naming the path (`.map_err(io_err(path))`).
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{}: {e}", path.display()))
}

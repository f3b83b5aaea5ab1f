//! diffuse-core: the diffusion math of diffuse, equal to Hugging Face diffusers.
//!
//! - [`config`]: a diffusers `scheduler_config.json`, read as it is and validated.
//! - [`compat`]: which sampler drives which model objective (supported, converted or refused),
//!   and the scheduler config to plan a sampler with on a given model.
//! - [`schedule`]: β → ᾱ → σ and timestep spacing.
//! - [`noising`]: q(x_t|x₀), ε/x₀/v conversions, SNR and Min-SNR-γ weights.
//! - [`sampler`]: DDPM, DDIM, PNDM/PLMS, Euler, Euler-ancestral, Heun, DPM-Solver++(2M), UniPC
//!   (the last two also on flow-matching σ), flow-matching Euler/Heun, the EDM Euler and
//!   DPM-Solver++ schedulers and LCM, each a plan plus an explicit per-request state.
//! - [`edm`]: EDM preconditioning (c_in, c_noise, c_skip, c_out) and its training σ.
//! - [`rng`]: seeded noise, one stream per sample (sample i is the same whatever the batch).
//! - [`denoiser`]: the model seam and classifier-free guidance.
//!
//! ```
//! use diffuse_core::{config::SchedulerConfig, sampler::Sampler};
//! let config = SchedulerConfig::from_json_str(r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
//! let sampler = Sampler::new(&config, 10).unwrap();
//! assert_eq!(sampler.timesteps()[0], 900.0);
//! ```

pub mod compat;
pub mod config;
pub mod denoiser;
pub mod edm;
pub mod error;
pub mod noising;
pub mod pyjson;
pub mod rng;
pub mod sampler;
pub mod schedule;

pub use error::{Error, Result};

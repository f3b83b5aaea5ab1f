//! diffuse-models: networks with Hugging Face diffusers' config keys and weight names, on
//! candle, so a model moves between diffusers and diffuse without conversion scripts.
//!
//! - [`unet_2d::UNet2DModel`] and its parts ([`blocks`], [`resnet`], [`attention`],
//!   [`embeddings`]); [`vae::AutoencoderKL`] (latent diffusion's VAE) from the same parts;
//!   [`dit::DiTTransformer2DModel`] (the Diffusion Transformer);
//!   [`unet_2d_condition::UNet2DConditionModel`] (Stable Diffusion's text-conditioned UNet, its
//!   cross-attention blocks in [`transformer_2d`]).
//! - [`net::Network`]: a UNet or a DiT, the one network type pipelines, the server and the
//!   trainer take.
//! - [`weights`]: `diffusion_pytorch_model.safetensors` in and out (f32/f16/bf16 on disk), and
//!   diffusers pipeline folders.
//! - [`ops`]: the one seam through which models reach the hot ops.
//! - [`checkpoint`]: gradient checkpointing (activations recomputed in backward).
//! - [`onnx`]: ONNX export of a UNet, DiT or VAE decoder, written by diffuse itself.
//! - [`flops`]: analytic forward FLOPs of a UNet or DiT config (the bench's GFLOP/s).
//! - [`precision`]: bf16/f16 copies of a network (mixed-precision training, `sample --dtype`).
//! - [`denoise`]: a loaded model as a `diffuse_core` denoiser; [`pipeline`]: the one folder
//!   loader ([`pipeline::Pipeline`]) and batched generation (pixel or latent);
//!   [`latent_cache`]: a data set encoded once into latent shards.
//! - [`text`]: Stable Diffusion's text side under transformers' names: the CLIP tokenizer
//!   ([`text::ClipTokenizer`]) and text encoder ([`text::ClipTextModel`]).
//! - [`quant`]: int8 weights with per-channel scales (`diffuse quantize`); [`prune`]:
//!   structured pruning of the ResNet blocks' inner channels (`diffuse prune`).

pub mod attention;
pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod denoise;
pub mod dit;
pub mod embeddings;
pub mod flops;
pub mod hub;
pub mod kernels;
pub mod latent_cache;
pub mod net;
pub mod onnx;
pub mod ops;
pub mod pipeline;
pub mod precision;
pub mod profile;
pub mod prune;
pub mod quant;
pub mod resnet;
pub mod text;
pub mod torch_bin;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_condition;
pub mod vae;
pub mod weights;

pub use config::{
    AutoencoderKLConfig, DiTTransformer2DConfig, UNet2DConditionConfig, UNet2DConfig,
};
pub use dit::DiTTransformer2DModel;
pub use net::{Network, NetworkConfig};
pub use unet_2d::UNet2DModel;
pub use unet_2d_condition::UNet2DConditionModel;
pub use vae::AutoencoderKL;

/// Errors of model building, loading and running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value diffuse cannot use (the message names the key).
    #[error("{0}")]
    Config(String),
    /// Weights missing, mis-shaped or unreadable (the message names the tensor or file).
    #[error("{0}")]
    Weights(String),
    /// Inputs that do not fit the model.
    #[error("{0}")]
    Input(String),
    /// A hub id neither in the local cache nor downloadable (the message says where diffuse
    /// looked).
    #[error("{0}")]
    Hub(String),
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
    /// A sampler that cannot drive the model (one line naming the samplers that work).
    #[error(transparent)]
    Compat(#[from] diffuse_core::compat::CompatError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// For `map_err`: an I/O error on `path`.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

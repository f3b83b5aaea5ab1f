//! One type for "the denoising network" of a pipeline: a [`UNet2DModel`], a
//! [`DiTTransformer2DModel`] or a text-conditioned [`UNet2DConditionModel`]. Generation, serving, sampling and training take a
//! [`Network`]; its config ([`NetworkConfig`]) is read from `config.json` by
//! `_class_name`, so the generic `weights::{load, save, build}` handle both.
//!
//! They differ only in what the rest of the code asks of them: channels, sample size, the
//! size multiple, the conditioning (a class table whose last label is the null class of
//! guidance, or a text encoder's hidden states), and the pipeline component they live in
//! (`unet/` or `transformer/`).

use crate::config::TimeEmbeddingType;
use crate::dit::{split_learned_sigma, DiTTransformer2DModel};
use crate::{
    DiTTransformer2DConfig, Error, Result, UNet2DConditionConfig, UNet2DConditionModel,
    UNet2DConfig, UNet2DModel,
};
use candle_core::Tensor;
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

/// The config of a denoising network, by diffusers `_class_name`.
// A config or model exists once per loaded network and is not moved in hot paths: boxing the
// larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum NetworkConfig {
    UNet(UNet2DConfig),
    DiT(DiTTransformer2DConfig),
    UNetCond(UNet2DConditionConfig),
}

impl From<UNet2DConditionConfig> for NetworkConfig {
    fn from(c: UNet2DConditionConfig) -> Self {
        NetworkConfig::UNetCond(c)
    }
}

impl From<UNet2DConfig> for NetworkConfig {
    fn from(c: UNet2DConfig) -> Self {
        NetworkConfig::UNet(c)
    }
}

impl From<DiTTransformer2DConfig> for NetworkConfig {
    fn from(c: DiTTransformer2DConfig) -> Self {
        NetworkConfig::DiT(c)
    }
}

/// `_class_name`s of DiT configs (the hub's DiT checkpoints still say `Transformer2DModel`).
const DIT_CLASSES: [&str; 2] = ["DiTTransformer2DModel", "Transformer2DModel"];

impl NetworkConfig {
    /// Parses `config.json` text: a UNet2DModel (also when `_class_name` is absent, as before)
    /// or a DiTTransformer2DModel; validated.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: serde_json::Value =
            diffuse_core::pyjson::parse(text).map_err(|e| Error::Config(format!("config: {e}")))?;
        match v.get("_class_name").and_then(|c| c.as_str()) {
            Some(c) if DIT_CLASSES.contains(&c) => {
                Ok(DiTTransformer2DConfig::from_json_str(text)?.into())
            }
            None | Some("UNet2DModel") => Ok(UNet2DConfig::from_json_str(text)?.into()),
            Some("UNet2DConditionModel") => Ok(UNet2DConditionConfig::from_json_str(text)?.into()),
            Some(c) => Err(Error::Config(format!(
                "config key `_class_name`: {c:?} is not a denoising network diffuse implements; \
                 allowed: UNet2DModel, DiTTransformer2DModel, UNet2DConditionModel"
            ))),
        }
    }

    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// The pipeline component (and folder) that holds this network: `unet` or `transformer`.
    pub fn component(&self) -> &'static str {
        match self {
            NetworkConfig::UNet(_) | NetworkConfig::UNetCond(_) => "unet",
            NetworkConfig::DiT(_) => "transformer",
        }
    }

    /// The diffusers class name written into `model_index.json`.
    pub fn class_name(&self) -> &'static str {
        match self {
            NetworkConfig::UNet(_) => "UNet2DModel",
            NetworkConfig::DiT(_) => "DiTTransformer2DModel",
            NetworkConfig::UNetCond(_) => "UNet2DConditionModel",
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            NetworkConfig::UNet(c) => c.in_channels,
            NetworkConfig::DiT(c) => c.in_channels,
            NetworkConfig::UNetCond(c) => c.in_channels,
        }
    }

    pub fn out_channels(&self) -> usize {
        match self {
            NetworkConfig::UNet(c) => c.out_channels,
            NetworkConfig::DiT(c) => c.out_channels(),
            NetworkConfig::UNetCond(c) => c.out_channels,
        }
    }

    /// Spatial size (height, width), if the config gives one.
    pub fn sample_hw(&self) -> Option<(usize, usize)> {
        match self {
            NetworkConfig::UNet(c) => c.sample_hw(),
            NetworkConfig::DiT(c) => Some((c.sample_size, c.sample_size)),
            NetworkConfig::UNetCond(c) => c.sample_hw(),
        }
    }

    /// Whether weight `name` is trained (diffusers keeps a UNet's Fourier projection fixed).
    pub fn trainable(&self, name: &str) -> bool {
        match self {
            NetworkConfig::UNet(c) => {
                name != "time_proj.weight" || c.time_embedding_type != TimeEmbeddingType::Fourier
            }
            NetworkConfig::DiT(_) | NetworkConfig::UNetCond(_) => true,
        }
    }

    /// Re-initializes freshly built weights from `seed` the way each architecture's reference
    /// code does (PyTorch layer defaults for the UNet; the DiT paper's adaLN-Zero init).
    pub fn seeded_init(&self, varmap: &VarMap, seed: u64) -> Result<()> {
        match self {
            NetworkConfig::UNet(_) | NetworkConfig::UNetCond(_) => {
                crate::weights::seeded_init(varmap, seed)
            }
            NetworkConfig::DiT(_) => crate::dit::seeded_init(varmap, seed),
        }
    }
}

/// A denoising network: what pipelines, the server and the trainer run.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Network {
    UNet(UNet2DModel),
    DiT(DiTTransformer2DModel),
    UNetCond(UNet2DConditionModel),
}

impl From<UNet2DConditionModel> for Network {
    fn from(m: UNet2DConditionModel) -> Self {
        Network::UNetCond(m)
    }
}

impl From<UNet2DModel> for Network {
    fn from(m: UNet2DModel) -> Self {
        Network::UNet(m)
    }
}

impl From<DiTTransformer2DModel> for Network {
    fn from(m: DiTTransformer2DModel) -> Self {
        Network::DiT(m)
    }
}

impl Network {
    pub fn new(config: &NetworkConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match config {
            NetworkConfig::UNet(c) => Network::UNet(UNet2DModel::new(c, vb)?),
            NetworkConfig::DiT(c) => Network::DiT(DiTTransformer2DModel::new(c, vb)?),
            NetworkConfig::UNetCond(c) => Network::UNetCond(UNet2DConditionModel::new(c, vb)?),
        })
    }

    /// Gradient checkpointing: the UNet's ResNets, attentions and resamplers, or the DiT's
    /// transformer blocks, recompute their activations in backward ([`crate::checkpoint`]).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        match self {
            Network::UNet(m) => m.set_gradient_checkpointing(on),
            Network::DiT(m) => m.set_gradient_checkpointing(on),
            Network::UNetCond(m) => m.set_gradient_checkpointing(on),
        }
    }

    /// The config (cloned into the enum).
    pub fn config(&self) -> NetworkConfig {
        match self {
            Network::UNet(m) => m.config().clone().into(),
            Network::DiT(m) => m.config().clone().into(),
            Network::UNetCond(m) => m.config().clone().into(),
        }
    }

    /// The full network output `[b, out_channels, h, w]` (a DiT's learned-variance half
    /// included). `class_labels`: the conditioning — `[b]` integer labels (a DiT without labels
    /// uses its null class), or for a text-conditioned UNet the prompt embeddings
    /// `[b, L, cross_attention_dim]` (required).
    /// A network with bf16/f16 weights takes and returns `x`'s dtype: the input is cast down
    /// and the output back up (torch.autocast's boundary), so samplers and losses stay f32.
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &[f32],
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dtype = self.dtype();
        if x.dtype() != dtype {
            let out = self.forward(&x.to_dtype(dtype)?, timesteps, class_labels)?;
            return Ok(out.to_dtype(x.dtype())?);
        }
        match self {
            Network::UNet(m) => m.forward(x, timesteps, class_labels),
            Network::DiT(m) => m.forward(x, timesteps, class_labels),
            Network::UNetCond(m) => match class_labels {
                Some(ctx) => m.forward(x, timesteps, ctx),
                None => Err(Error::Input(
                    "this model is text-conditional: prompt embeddings are required".into(),
                )),
            },
        }
    }

    /// The dtype of the weights (f32 unless built low-precision).
    pub fn dtype(&self) -> candle_core::DType {
        match self {
            Network::UNet(m) => m.dtype(),
            Network::DiT(m) => m.dtype(),
            Network::UNetCond(m) => m.dtype(),
        }
    }

    /// What samplers and losses use: [`forward`](Self::forward) without a learned-variance
    /// half (the first `in_channels` channels when `out_channels = 2 · in_channels`, as
    /// diffusers' `DiTPipeline` splits it).
    pub fn predict(
        &self,
        x: &Tensor,
        timesteps: &[f32],
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let out = self.forward(x, timesteps, class_labels)?;
        Ok(split_learned_sigma(&out, self.in_channels())?.0)
    }

    pub fn in_channels(&self) -> usize {
        match self {
            Network::UNet(m) => m.config().in_channels,
            Network::DiT(m) => m.config().in_channels,
            Network::UNetCond(m) => m.config().in_channels,
        }
    }

    pub fn out_channels(&self) -> usize {
        match self {
            Network::UNet(m) => m.config().out_channels,
            Network::DiT(m) => m.config().out_channels(),
            Network::UNetCond(m) => m.config().out_channels,
        }
    }

    /// Spatial size (height, width) of the config, if it gives one.
    pub fn sample_hw(&self) -> Option<(usize, usize)> {
        match self {
            Network::UNet(m) => m.config().sample_hw(),
            Network::DiT(m) => Some((m.config().sample_size, m.config().sample_size)),
            Network::UNetCond(m) => m.config().sample_hw(),
        }
    }

    /// Height and width must divide by this.
    pub fn size_multiple(&self) -> usize {
        match self {
            Network::UNet(m) => m.size_multiple(),
            Network::DiT(m) => m.size_multiple(),
            Network::UNetCond(m) => m.size_multiple(),
        }
    }

    /// Whether the model needs (UNet) or was trained with (DiT) class labels.
    pub fn is_class_conditional(&self) -> bool {
        match self {
            Network::UNet(m) => m.is_class_conditional(),
            Network::DiT(m) => m.is_class_conditional(),
            Network::UNetCond(_) => false,
        }
    }

    /// The width of the prompt embeddings a text-conditioned UNet reads
    /// (`cross_attention_dim`); None for the class-conditional and unconditional networks.
    pub fn context_dim(&self) -> Option<usize> {
        match self {
            Network::UNetCond(m) => Some(m.config().context_dim()),
            Network::UNet(_) | Network::DiT(_) => None,
        }
    }

    /// Rows of the integer class table, the null class of guidance (the last row) included:
    /// labels are `0..n`. None without a class table (unconditional, or a UNet whose classes
    /// enter another way).
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            Network::UNet(m) => match m.config().class_embedding() {
                crate::config::ClassEmbedding::Table(n) => Some(n),
                _ => None,
            },
            Network::DiT(m) => m
                .is_class_conditional()
                .then(|| m.config().num_classes() + 1),
            Network::UNetCond(_) => None,
        }
    }

    /// The pipeline component that holds this network: `unet` or `transformer`.
    pub fn component(&self) -> &'static str {
        match self {
            Network::UNet(_) | Network::UNetCond(_) => "unet",
            Network::DiT(_) => "transformer",
        }
    }
}

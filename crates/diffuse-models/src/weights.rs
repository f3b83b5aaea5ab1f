//! Weights in and out, in diffusers' layout (UNet2DModel, DiTTransformer2DModel and
//! AutoencoderKL alike, through [`DiffusersModel`]): a model folder holds `config.json` and
//! `diffusion_pytorch_model.safetensors` (or a sharded `.safetensors.index.json`, or an `fp16`
//! variant); a pipeline folder holds `model_index.json`, the denoising network (`unet/`, or
//! `transformer/` for a DiT) and `scheduler/`, and `vae/` for a latent pipeline.
//!
//! Pipeline classes ([`pipeline_index`]): a pixel UNet is diffusers' `DDPMPipeline`; a latent
//! UNet is [`LATENT_PIPELINE_CLASS`] (diffusers has none for it); a DiT is diffusers'
//! `DiTPipeline` in both cases — with `vae/` for latent diffusion, and with `"vae": [null,
//! null]` in pixel space (diffusers' own way of writing an absent component: its
//! `DiTPipeline.from_pretrained(dir, vae=None)` loads such a folder, and
//! `DiTTransformer2DModel.from_pretrained(dir, subfolder="transformer")` the model).
//! Tensors on disk may be f32, f16 or bf16, or int8 with per-channel scales (`diffuse quantize`,
//! [`crate::quant`], dequantised here at load); in memory the model is f32 unless asked otherwise.
//! A pruned UNet (`diffuse prune`, [`crate::prune`]) loads the same way: its config says how
//! wide each pruned ResNet block is.

use crate::dit::DiTTransformer2DModel;
use crate::net::{Network, NetworkConfig};
use crate::{
    AutoencoderKL, AutoencoderKLConfig, DiTTransformer2DConfig, Error, Result, UNet2DConfig,
    UNet2DModel,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const WEIGHTS_NAME: &str = "diffusion_pytorch_model.safetensors";
pub const CONFIG_NAME: &str = "config.json";
/// `_class_name` of diffuse's latent diffusion pipeline (`vae/` + `unet/` + `scheduler/`):
/// diffusers has no pipeline for an unconditional/class-conditional UNet2DModel on AutoencoderKL
/// latents.
pub const LATENT_PIPELINE_CLASS: &str = "DiffuseLatentPipeline";

/// `_class_name` of a DiT pipeline (`transformer/` + `scheduler/` + `vae/`, the VAE null in
/// pixel space): diffusers' own.
pub const DIT_PIPELINE_CLASS: &str = "DiTPipeline";

/// The key of `model_index.json` under which `diffuse train` records how its sample grids were
/// drawn. diffusers skips `_`-keys when it builds a pipeline, so the folder still loads there.
pub const SAMPLING_KEY: &str = "_diffuse_sampling";

/// Sampling defaults a pipeline records (`model_index.json`, [`SAMPLING_KEY`]): what `sample`,
/// `serve` and its web page use when the caller gives nothing.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_inference_steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    /// `[σ_lo, σ_hi]`: guide only at these noise levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_interval: Option<diffuse_core::denoiser::GuidanceInterval>,
    /// The timesteps of the pipeline's own sampler when it has no good spacing of its own for
    /// `num_inference_steps` (a multistep flow consistency student: σ·T evenly spaced, where
    /// diffusers' FlowMatch spacing of 2 steps is σ = 1, 0.001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<f64>>,
}

impl SamplingDefaults {
    /// The record in a parsed `model_index.json` (none: all defaults); a malformed record is an
    /// error naming the key.
    pub fn from_index(index: &serde_json::Value, path: &Path) -> Result<Self> {
        match index.get(SAMPLING_KEY) {
            None | Some(serde_json::Value::Null) => Ok(Self::default()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::Config(format!("{}: `{SAMPLING_KEY}`: {e}", path.display()))),
        }
    }

    /// Writes the record into `index` (nothing when empty).
    pub fn write_into(&self, index: &mut serde_json::Value) {
        if *self != Self::default() {
            index[SAMPLING_KEY] = serde_json::to_value(self).expect("json");
        }
    }
}

/// `model_index.json` of a pipeline folder for `net`: see the module docs for the classes.
pub fn pipeline_index(
    net: &NetworkConfig,
    scheduler_class: &str,
    with_vae: bool,
) -> serde_json::Value {
    match net {
        NetworkConfig::UNet(_) => model_index(scheduler_class, with_vae),
        NetworkConfig::UNetCond(_) => sd_model_index(scheduler_class),
        NetworkConfig::DiT(_) => serde_json::json!({
            "_class_name": DIT_PIPELINE_CLASS,
            "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", scheduler_class],
            "transformer": ["diffusers", "DiTTransformer2DModel"],
            "vae": if with_vae {
                serde_json::json!(["diffusers", "AutoencoderKL"])
            } else {
                serde_json::json!([null, null])
            },
        }),
    }
}

/// `_class_name` of a text-to-image pipeline (`text_encoder/` + `tokenizer/` + `unet/` +
/// `vae/` + `scheduler/`): diffusers' own.
pub const SD_PIPELINE_CLASS: &str = "StableDiffusionPipeline";

/// `model_index.json` of a [`SD_PIPELINE_CLASS`] folder, as diffusers writes it without a
/// safety checker (`requires_safety_checker: false`, null `safety_checker` and
/// `feature_extractor`).
pub fn sd_model_index(scheduler_class: &str) -> serde_json::Value {
    serde_json::json!({
        "_class_name": SD_PIPELINE_CLASS,
        "_diffusers_version": "0.42.1",
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
}

/// `model_index.json` of a UNet pipeline folder: `DDPMPipeline`, or [`LATENT_PIPELINE_CLASS`]
/// with a VAE.
pub fn model_index(scheduler_class: &str, with_vae: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "_class_name": if with_vae { LATENT_PIPELINE_CLASS } else { "DDPMPipeline" },
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", scheduler_class],
        "unet": ["diffusers", "UNet2DModel"],
    });
    if with_vae {
        v["vae"] = serde_json::json!(["diffusers", "AutoencoderKL"]);
    }
    v
}

/// What a `--model` folder turned out to be.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder itself (a hub id's cached snapshot).
    pub root: PathBuf,
    /// The folder holding the denoising network's config.json and weights: `unet/`, or
    /// `transformer/` of a DiT pipeline (load it with [`load_net`]).
    pub net_dir: PathBuf,
    /// `scheduler/scheduler_config.json` of a pipeline folder, if there is one.
    pub scheduler_config: Option<PathBuf>,
    /// The pipeline class (`DDPMPipeline`, …) when the folder is a pipeline.
    pub pipeline_class: Option<String>,
    /// `unet_ema/` beside `unet/` (`transformer_ema/` beside `transformer/`), as `diffuse
    /// train` writes it (EMA of the weights).
    pub ema_net_dir: Option<PathBuf>,
    /// `vae/` of a latent pipeline: the UNet denoises this AutoencoderKL's latents.
    pub vae_dir: Option<PathBuf>,
    /// `text_encoder/` of a text-to-image pipeline (transformers' `CLIPTextModel`).
    pub text_encoder_dir: Option<PathBuf>,
    /// `text_encoder_ema/` beside it, as `diffuse train` writes it.
    pub ema_text_encoder_dir: Option<PathBuf>,
    /// `tokenizer/` of a text-to-image pipeline (`CLIPTokenizer`: vocab.json + merges.txt).
    pub tokenizer_dir: Option<PathBuf>,
    /// The sampling defaults `model_index.json` records (all None for a bare model folder).
    pub sampling: SamplingDefaults,
}

impl ModelFolder {
    /// The network folder to load: the EMA copy (`unet_ema/`, `transformer_ema/`) when there is
    /// one, unless `no_ema`.
    pub fn net_dir_to_load(&self, no_ema: bool) -> &Path {
        match (&self.ema_net_dir, no_ema) {
            (Some(ema), false) => ema,
            _ => &self.net_dir,
        }
    }

    /// The text encoder folder to load: `text_encoder_ema/` beside `text_encoder/` (a pipeline
    /// diffuse trained keeps both, as for the UNet) unless `no_ema`; None without a text
    /// encoder.
    pub fn text_encoder_dir_to_load(&self, no_ema: bool) -> Option<&Path> {
        let enc = self.text_encoder_dir.as_deref()?;
        match &self.ema_text_encoder_dir {
            Some(ema) if !no_ema => Some(ema),
            _ => Some(enc),
        }
    }

    /// The network of [`Self::net_dir_to_load`] and, for a latent pipeline, its VAE, checked against it.
    pub fn load(
        &self,
        no_ema: bool,
        device: &Device,
    ) -> Result<(Network, Option<crate::AutoencoderKL>)> {
        let (net, _) = load_net(self.net_dir_to_load(no_ema), device)?;
        let vae = match &self.vae_dir {
            Some(d) => {
                let (vae, _) = load_vae(d, device)?;
                crate::pipeline::check_latent_channels(&net.config(), vae.config())?;
                Some(vae)
            }
            None => None,
        };
        Ok((net, vae))
    }
}

/// Whether a `model_index.json` entry names a component (`[null, null]` and null do not).
pub(crate) fn names_component(v: Option<&serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => a.iter().any(|x| !x.is_null()),
        Some(_) => true,
    }
}

/// Resolves a diffusers pipeline folder (`model_index.json`) or a bare model folder (UNet or
/// DiT), given as a path or as a hub id in the local Hugging Face cache ([`crate::hub`]).
pub fn resolve_model_folder(dir: &Path) -> Result<ModelFolder> {
    let root = crate::hub::resolve(dir)?;
    let dir = root.as_path();
    if !dir.is_dir() {
        return Err(Error::Weights(format!(
            "{}: not a folder (expected a diffusers pipeline or UNet folder)",
            dir.display()
        )));
    }
    let index = dir.join("model_index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(Error::io(&index))?;
        let v: serde_json::Value = diffuse_core::pyjson::parse(&text)
            .map_err(|e| Error::Config(format!("{}: malformed JSON: {e}", index.display())))?;
        let component = ["unet", "transformer"]
            .into_iter()
            .find(|c| names_component(v.get(*c)) && dir.join(c).is_dir())
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: the pipeline has no `unet` (or `transformer`) component",
                    index.display()
                ))
            })?;
        let net_dir = dir.join(component);
        // A component the index names must be there, with the file that makes it loadable.
        let component_dir = |name: &str, files: &[&str]| -> Result<Option<PathBuf>> {
            if !names_component(v.get(name)) {
                Ok(None)
            } else if files.iter().any(|f| dir.join(name).join(f).exists()) {
                Ok(Some(dir.join(name)))
            } else {
                Err(Error::Config(format!(
                    "{}: the pipeline names a `{name}` component but {} has no {}",
                    index.display(),
                    dir.join(name).display(),
                    files.join(" or ")
                )))
            }
        };
        let vae_dir = component_dir("vae", &[CONFIG_NAME])?;
        let text_encoder_dir = component_dir("text_encoder", &[CONFIG_NAME])?;
        // Hub folders ship vocab.json + merges.txt; transformers 5 saves tokenizer.json only.
        let tokenizer_dir = component_dir("tokenizer", &["vocab.json", "tokenizer.json"])?;
        let sched = dir.join("scheduler").join("scheduler_config.json");
        let ema = dir.join(format!("{component}_ema"));
        return Ok(ModelFolder {
            root: dir.to_path_buf(),
            net_dir,
            vae_dir,
            ema_net_dir: ema.join(CONFIG_NAME).exists().then_some(ema),
            scheduler_config: sched.exists().then_some(sched),
            ema_text_encoder_dir: text_encoder_dir
                .as_ref()
                .map(|d| d.with_file_name("text_encoder_ema"))
                .filter(|d| d.join(CONFIG_NAME).exists()),
            text_encoder_dir,
            tokenizer_dir,
            pipeline_class: v
                .get("_class_name")
                .and_then(|c| c.as_str())
                .map(String::from),
            sampling: SamplingDefaults::from_index(&v, &index)?,
        });
    }
    if dir.join(CONFIG_NAME).exists() {
        return Ok(ModelFolder {
            root: dir.to_path_buf(),
            net_dir: dir.to_path_buf(),
            scheduler_config: None,
            pipeline_class: None,
            ema_net_dir: None,
            vae_dir: None,
            text_encoder_dir: None,
            ema_text_encoder_dir: None,
            tokenizer_dir: None,
            sampling: SamplingDefaults::default(),
        });
    }
    Err(Error::Weights(format!(
        "{}: neither model_index.json (pipeline) nor config.json (model) found",
        dir.display()
    )))
}

/// A diffusers model type: its `config.json` and how it is built from weights under
/// diffusers' names. The folder functions below are generic over it.
pub trait DiffusersModel: Sized {
    type Config: serde::Serialize;
    /// Parses and validates `config.json` text.
    fn parse_config(text: &str) -> Result<Self::Config>;
    fn build(config: &Self::Config, vb: VarBuilder) -> Result<Self>;
}

impl DiffusersModel for UNet2DModel {
    type Config = UNet2DConfig;
    fn parse_config(text: &str) -> Result<UNet2DConfig> {
        UNet2DConfig::from_json_str(text)
    }
    fn build(config: &UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        UNet2DModel::new(config, vb)
    }
}

impl DiffusersModel for DiTTransformer2DModel {
    type Config = DiTTransformer2DConfig;
    fn parse_config(text: &str) -> Result<DiTTransformer2DConfig> {
        DiTTransformer2DConfig::from_json_str(text)
    }
    fn build(config: &DiTTransformer2DConfig, vb: VarBuilder) -> Result<Self> {
        DiTTransformer2DModel::new(config, vb)
    }
}

/// A UNet or a DiT, chosen by the config's `_class_name`.
impl DiffusersModel for Network {
    type Config = NetworkConfig;
    fn parse_config(text: &str) -> Result<NetworkConfig> {
        NetworkConfig::from_json_str(text)
    }
    fn build(config: &NetworkConfig, vb: VarBuilder) -> Result<Self> {
        Network::new(config, vb)
    }
}

impl DiffusersModel for AutoencoderKL {
    type Config = AutoencoderKLConfig;
    fn parse_config(text: &str) -> Result<AutoencoderKLConfig> {
        AutoencoderKLConfig::from_json_str(text)
    }
    fn build(config: &AutoencoderKLConfig, vb: VarBuilder) -> Result<Self> {
        AutoencoderKL::new(config, vb)
    }
}

/// Writes a latent pipeline folder `dir`: the denoiser (`unet/`, or `transformer/` for a DiT)
/// and `vae/` copied from model folders (config and weight files as they are),
/// `scheduler/scheduler_config.json` and `model_index.json`. Fails, writing nothing, when the
/// network cannot denoise the VAE's latents.
pub fn write_latent_pipeline(
    dir: &Path,
    unet_dir: &Path,
    vae_dir: &Path,
    scheduler: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let net = read_config::<Network>(unet_dir)?;
    crate::pipeline::check_latent_channels(&net, &read_vae_config(vae_dir)?)?;
    let write = |path: &Path, bytes: &[u8]| -> Result<()> {
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .map_err(Error::io(path))?;
        diffuse_data::fs::write_atomic(path, bytes).map_err(|e| Error::Weights(e.to_string()))
    };
    copy_model_folder(unet_dir, &dir.join(net.component()))?;
    copy_model_folder(vae_dir, &dir.join("vae"))?;
    let class = scheduler
        .get("_class_name")
        .and_then(|c| c.as_str())
        .unwrap_or("DDPMScheduler");
    let text = diffuse_core::pyjson::to_string_pretty;
    write(
        &dir.join("scheduler").join("scheduler_config.json"),
        text(&serde_json::Value::Object(scheduler.clone())).as_bytes(),
    )?;
    write(
        &dir.join("model_index.json"),
        text(&pipeline_index(&net, class, true)).as_bytes(),
    )
}

/// Copies a model folder's `config.json` and weight files (sharded index included) as they are.
pub fn copy_model_folder(src: &Path, dst: &Path) -> Result<()> {
    let mut files = weight_files(src)?;
    files.push(src.join(CONFIG_NAME));
    let index = src.join(format!("{WEIGHTS_NAME}.index.json"));
    if index.exists() {
        files.push(index);
    }
    std::fs::create_dir_all(dst).map_err(Error::io(dst))?;
    for f in files {
        let bytes = std::fs::read(&f).map_err(Error::io(&f))?;
        diffuse_data::fs::write_atomic(&dst.join(f.file_name().expect("a file")), &bytes)
            .map_err(|e| Error::Weights(e.to_string()))?;
    }
    Ok(())
}

/// Reads and validates `dir/config.json` as model `M`'s config.
pub fn read_config<M: DiffusersModel>(dir: &Path) -> Result<M::Config> {
    let path = dir.join(CONFIG_NAME);
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    M::parse_config(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// A freshly initialized model and the variables that hold its weights.
pub fn build<M: DiffusersModel>(config: &M::Config, device: &Device) -> Result<(M, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = M::build(config, vb)?;
    Ok((model, varmap))
}

/// Loads a model folder (config + weights) as f32 on `device`, for inference: the model is
/// built on plain (detached) tensors. Weights held as candle `Var`s make every op record the
/// graph, so a sampling loop would keep every step's activations alive (measured: DDIM-50 of
/// 256 images ran out of the H100's 80 GB). The `VarMap` with the same values is returned for
/// saving or for training.
pub fn load<M: DiffusersModel>(dir: &Path, device: &Device) -> Result<(M, VarMap)> {
    let config = read_config::<M>(dir)?;
    let (_, varmap) = build::<M>(&config, device)?;
    let files = weight_files(dir)?;
    load_into(&varmap, &files)?;
    let model = from_tensors::<M>(&config, detached_tensors(&varmap), device)?;
    Ok((model, varmap))
}

/// A model over the given named tensors (every weight the config needs must be there).
pub fn from_tensors<M: DiffusersModel>(
    config: &M::Config,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<M> {
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    M::build(config, vb)
}

/// Reads and validates a UNet folder's `config.json`.
pub fn read_unet_config(dir: &Path) -> Result<UNet2DConfig> {
    read_config::<UNet2DModel>(dir)
}

/// A freshly initialized UNet and its variables.
pub fn build_unet(config: &UNet2DConfig, device: &Device) -> Result<(UNet2DModel, VarMap)> {
    build(config, device)
}

/// Loads a UNet folder for inference (see [`load`]).
pub fn load_unet(dir: &Path, device: &Device) -> Result<(UNet2DModel, VarMap)> {
    load(dir, device)
}

/// Loads a UNet or DiT model folder (by its config's `_class_name`) for inference (see [`load`]).
pub fn load_net(dir: &Path, device: &Device) -> Result<(Network, VarMap)> {
    load(dir, device)
}

/// Reads and validates a VAE folder's `config.json`.
pub fn read_vae_config(dir: &Path) -> Result<AutoencoderKLConfig> {
    read_config::<AutoencoderKL>(dir)
}

/// A freshly initialized AutoencoderKL and its variables.
pub fn build_vae(config: &AutoencoderKLConfig, device: &Device) -> Result<(AutoencoderKL, VarMap)> {
    build(config, device)
}

/// Loads an AutoencoderKL folder for inference (see [`load`]).
pub fn load_vae(dir: &Path, device: &Device) -> Result<(AutoencoderKL, VarMap)> {
    load(dir, device)
}

/// A UNet over detached copies of the variables' tensors (no graph recording).
pub fn inference_model(
    config: &UNet2DConfig,
    varmap: &VarMap,
    device: &Device,
) -> Result<UNet2DModel> {
    from_tensors(config, detached_tensors(varmap), device)
}

/// Detached copies of the variables' tensors, by name.
pub fn detached_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
}

/// A UNet over the given named tensors.
pub fn model_from_tensors(
    config: &UNet2DConfig,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<UNet2DModel> {
    from_tensors(config, tensors, device)
}

/// Writes a model folder: `config` as config.json (with diffusers' version key when it has none)
/// and `weights` (safetensors bytes), each atomically.
pub fn write_model_folder(dst: &Path, mut config: serde_json::Value, weights: &[u8]) -> Result<()> {
    if config.get("_diffusers_version").is_none() {
        config["_diffusers_version"] = "0.42.1".into();
    }
    let write = |path: &Path, bytes: &[u8]| -> Result<()> {
        diffuse_data::fs::write_atomic(path, bytes).map_err(|e| Error::Weights(e.to_string()))
    };
    std::fs::create_dir_all(dst).map_err(Error::io(dst))?;
    write(&dst.join(WEIGHTS_NAME), weights)?;
    let text = serde_json::to_string_pretty(&config).expect("serializable");
    write(&dst.join(CONFIG_NAME), text.as_bytes())
}

/// `.bin` weights of a folder saved with `safe_serialization=False` (read by [`crate::torch_bin`]).
pub const BIN_WEIGHTS_NAME: &str = "diffusion_pytorch_model.bin";

/// The weight file(s) of a model folder, in diffusers' order of preference: safetensors (one
/// file, a sharded index), its fp16/bf16 variants, then PyTorch `.bin` the same way.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for name in [WEIGHTS_NAME, BIN_WEIGHTS_NAME] {
        let plain = dir.join(name);
        if plain.exists() {
            return Ok(vec![plain]);
        }
        if let Some(files) = sharded(dir, name)? {
            return Ok(files);
        }
        let (stem, ext) = name
            .rsplit_once('.')
            .expect("a weight file name has an extension");
        for variant in ["fp16", "bf16"] {
            let p = dir.join(format!("{stem}.{variant}.{ext}"));
            if p.exists() {
                return Ok(vec![p]);
            }
            if let Some(files) = sharded_index(&dir.join(format!("{name}.index.{variant}.json")))? {
                return Ok(files);
            }
        }
    }
    Err(Error::Weights(format!(
        "{}: no {WEIGHTS_NAME} (nor a sharded index, an fp16 variant or {BIN_WEIGHTS_NAME})",
        dir.display()
    )))
}

/// The files of `NAME.index.json`'s `weight_map`, if the index exists.
fn sharded(dir: &Path, name: &str) -> Result<Option<Vec<PathBuf>>> {
    sharded_index(&dir.join(format!("{name}.index.json")))
}

/// The files of an index's `weight_map` (beside the index), if the index exists.
pub(crate) fn sharded_index(index: &Path) -> Result<Option<Vec<PathBuf>>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let index = index.to_path_buf();
    if !index.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&index).map_err(Error::io(&index))?;
    let v: serde_json::Value = diffuse_core::pyjson::parse(&text)
        .map_err(|e| Error::Weights(format!("{}: malformed JSON: {e}", index.display())))?;
    let files: BTreeSet<String> = v["weight_map"]
        .as_object()
        .ok_or_else(|| Error::Weights(format!("{}: no weight_map", index.display())))?
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    Ok(Some(files.into_iter().map(|f| dir.join(f)).collect()))
}

/// Reads weight files (safetensors, or `.bin` through [`crate::torch_bin`]) into the model's
/// variables: every variable must be present with
/// its exact shape; values are converted to the variable's dtype, int8 weights
/// (`crate::quant`) dequantised. Returns the names of tensors in the files that the model does
/// not use.
pub fn load_into(varmap: &VarMap, files: &[PathBuf]) -> Result<Vec<String>> {
    let tensors = read_weight_files(files, &varmap_device(varmap))?;
    assign(varmap, &tensors, files)
}

/// The device of a `VarMap`'s variables (the CPU when it has none).
pub(crate) fn varmap_device(varmap: &VarMap) -> Device {
    let data = varmap.data().lock().expect("varmap lock");
    data.values()
        .next()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu)
}

/// Every tensor of the weight files (safetensors, or `.bin` through [`crate::torch_bin`]), by
/// name, on `device`; int8 weights (`crate::quant`) dequantised.
pub(crate) fn read_weight_files(
    files: &[PathBuf],
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in files {
        if f.extension().is_some_and(|e| e == "bin") {
            tensors.extend(crate::torch_bin::read(f, device)?);
            continue;
        }
        let bytes = std::fs::read(f).map_err(Error::io(f))?;
        // int8 weights of `diffuse quantize` come back dequantised to f32 (crate::quant).
        tensors.extend(crate::quant::read_safetensors(&bytes, f, device)?);
    }
    Ok(tensors)
}

/// Sets every variable from `tensors` (read from `files`, named in errors): see [`load_into`].
pub(crate) fn assign(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    files: &[PathBuf],
) -> Result<Vec<String>> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = tensors
            .get(name)
            .or_else(|| tensors.get(&legacy_name(name)?))
            .ok_or_else(|| {
                Error::Weights(format!(
                    "missing tensor `{name}` (shape {:?}) in {}",
                    var.dims(),
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if t.dims() != var.dims() {
            return Err(Error::Weights(format!(
                "tensor `{name}` has shape {:?} in the file, the model expects {:?}",
                t.dims(),
                var.dims()
            )));
        }
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(Error::Weights(format!(
                "tensor `{name}` has dtype {:?}; expected a float type",
                t.dtype()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    let used: BTreeSet<String> = data
        .keys()
        .flat_map(|k| [Some(k.clone()), legacy_name(k)])
        .flatten()
        .collect();
    let mut unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    unexpected.sort();
    Ok(unexpected)
}

/// The attention weight names of diffusers < 0.14 checkpoints (`query`, `key`, `value`,
/// `proj_attn`), which diffusers still renames on load.
fn legacy_name(name: &str) -> Option<String> {
    for (new, old) in [
        (".to_q.", ".query."),
        (".to_k.", ".key."),
        (".to_v.", ".value."),
        (".to_out.0.", ".proj_attn."),
    ] {
        if name.contains(new) {
            return Some(name.replacen(new, old, 1));
        }
    }
    None
}

/// Writes `dir/config.json` and `dir/diffusion_pytorch_model.safetensors` (tensors converted to
/// `dtype`), each atomically, creating `dir`.
pub fn save(
    config: &impl serde::Serialize,
    varmap: &VarMap,
    dir: &Path,
    dtype: DType,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let bytes = serialize_vars(varmap, dtype)?;
    diffuse_data::fs::write_atomic(&dir.join(WEIGHTS_NAME), &bytes)
        .map_err(|e| Error::Weights(e.to_string()))?;
    write_config(config, dir)
}

/// Writes `dir/config.json` atomically, with diffusers' `_diffusers_version` when it has none.
fn write_config(config: &impl serde::Serialize, dir: &Path) -> Result<()> {
    let mut cfg = serde_json::to_value(config).expect("serializable");
    cfg["_diffusers_version"] = cfg
        .get("_diffusers_version")
        .cloned()
        .unwrap_or_else(|| "0.42.1".into());
    let text = serde_json::to_string_pretty(&cfg).expect("serializable");
    diffuse_data::fs::write_atomic(&dir.join(CONFIG_NAME), text.as_bytes())
        .map_err(|e| Error::Weights(e.to_string()))
}

/// How `diffuse convert` lays weights out on disk, as diffusers' `save_pretrained(variant=,
/// max_shard_size=)` does.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub dtype: DType,
    /// `fp16` → `diffusion_pytorch_model.fp16.safetensors`.
    pub variant: Option<String>,
    /// Shards of at most this many bytes (`-00001-of-0000N` files and an index); None: one file.
    pub max_shard_size: Option<u64>,
}

/// Parses diffusers' `max_shard_size`: bytes, or a number with `KB`/`MB`/`GB` (powers of 1000)
/// or `KiB`/`MiB`/`GiB` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), &t[split..]);
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => 0,
    };
    match num.parse::<f64>() {
        Ok(n) if n > 0.0 && mult > 0 => Ok((n * mult as f64) as u64),
        _ => Err(Error::Config(format!(
            "size {s:?}: expected bytes or a number with KB, MB, GB, KiB, MiB or GiB (e.g. 10GB)"
        ))),
    }
}

/// Writes `dir/config.json` and the weights in `layout` (each file atomically), after removing
/// the weight files of another layout that `dir` held (so a reader cannot pick a stale one).
pub fn save_as(
    config: &impl serde::Serialize,
    varmap: &VarMap,
    dir: &Path,
    layout: &Layout,
) -> Result<()> {
    if layout.variant.is_none() && layout.max_shard_size.is_none() {
        return save(config, varmap, dir, layout.dtype);
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("diffusion_pytorch_model") {
            std::fs::remove_file(entry.path()).map_err(Error::io(&entry.path()))?;
        }
    }
    let stem = match &layout.variant {
        Some(v) => format!("diffusion_pytorch_model.{v}"),
        None => "diffusion_pytorch_model".to_string(),
    };
    let mut entries: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(layout.dtype)?)))
            .collect::<Result<_>>()?
    };
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    // Greedy in name order, as huggingface_hub's split_torch_state_dict_into_shards.
    let limit = layout.max_shard_size.unwrap_or(u64::MAX);
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut size = 0u64;
    for (k, t) in entries {
        let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        if size > 0 && size + bytes > limit {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push((k, t));
    }
    let write = |name: &str, bytes: &[u8]| {
        diffuse_data::fs::write_atomic(&dir.join(name), bytes)
            .map_err(|e| Error::Weights(e.to_string()))
    };
    if shards.len() == 1 {
        let bytes = serialize_tensors(shards.pop().expect("one shard"))?;
        write(&format!("{stem}.safetensors"), &bytes)?;
    } else {
        let n = shards.len();
        let mut map = serde_json::Map::new();
        let mut total = 0u64;
        for (i, shard) in shards.into_iter().enumerate() {
            let file = format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1);
            for (k, t) in &shard {
                map.insert(k.clone(), file.clone().into());
                total += (t.elem_count() * t.dtype().size_in_bytes()) as u64;
            }
            write(&file, &serialize_tensors(shard)?)?;
        }
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
        let index_name = match &layout.variant {
            Some(v) => format!("{WEIGHTS_NAME}.index.{v}.json"),
            None => format!("{WEIGHTS_NAME}.index.json"),
        };
        write(
            &index_name,
            serde_json::to_string_pretty(&index)
                .expect("json")
                .as_bytes(),
        )?;
    }
    write_config(config, dir)
}

/// Saves a UNet folder (see [`save`]).
pub fn save_unet(config: &UNet2DConfig, varmap: &VarMap, dir: &Path, dtype: DType) -> Result<()> {
    save(config, varmap, dir, dtype)
}

/// Saves an AutoencoderKL folder (see [`save`]).
pub fn save_vae(
    config: &AutoencoderKLConfig,
    varmap: &VarMap,
    dir: &Path,
    dtype: DType,
) -> Result<()> {
    save(config, varmap, dir, dtype)
}

/// The variables as a safetensors buffer (with `{"format": "pt"}` metadata, as diffusers writes).
pub fn serialize_vars(varmap: &VarMap, dtype: DType) -> Result<Vec<u8>> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut entries: Vec<(String, Tensor)> = Vec::with_capacity(data.len());
    for (k, v) in data.iter() {
        entries.push((k.clone(), v.as_tensor().to_dtype(dtype)?));
    }
    serialize_tensors(entries)
}

/// Named tensors as a safetensors buffer, sorted by name, with diffusers' `{"format": "pt"}`.
pub fn serialize_tensors(mut entries: Vec<(String, Tensor)>) -> Result<Vec<u8>> {
    for (_, t) in entries.iter_mut() {
        *t = t.to_device(&Device::Cpu)?;
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(entries.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .map_err(|e| Error::Weights(format!("cannot serialize weights: {e}")))
}

/// Parses `f32`, `f16`, `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::Config(format!(
            "unknown dtype {s:?}; allowed: f32, f16, bf16"
        ))),
    }
}

/// Re-initializes every variable from `seed`, as PyTorch initializes these layers (so a
/// training run is reproducible; candle's own CPU random init cannot be seeded): conv and
/// linear weights and biases U(−1/√fan_in, 1/√fan_in) (kaiming-uniform with a = √5), GroupNorm
/// weight 1 and bias 0, embeddings N(0, 1), the Fourier projection N(0, 1)·16.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x1A17_5EED);
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let (stem, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let layer = stem.rsplit('.').next().unwrap_or("");
        let is_norm = layer.contains("norm");
        let values: Vec<f32> = if is_norm {
            vec![if leaf == "weight" { 1.0 } else { 0.0 }; n]
        } else if layer == "class_embedding" || (layer == "time_proj" && var.rank() == 2) {
            (0..n)
                .map(|_| rng.sample(rand_distr::StandardNormal))
                .collect()
        } else if layer == "time_proj" {
            (0..n)
                .map(|_| 16.0 * rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect()
        } else {
            let weight_dims = if leaf == "weight" {
                var.dims().to_vec()
            } else {
                data.get(&format!("{stem}.weight"))
                    .map(|w| w.dims().to_vec())
                    .unwrap_or_else(|| var.dims().to_vec())
            };
            let fan_in: usize = weight_dims[1..].iter().product::<usize>().max(1);
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

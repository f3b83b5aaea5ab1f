//! One loader for a pipeline or model folder, as diffusers' `DiffusionPipeline.from_pretrained`
//! does it for the folders of [`crate::weights`]: the network (EMA weights unless told
//! otherwise, at the precision asked for), the VAE of a latent pipeline, the scheduler config
//! (DDIMScheduler's defaults when the folder has none) and what the folder records for
//! sampling: image size, classes, `num_inference_steps`. Another sampler than the folder's own
//! scheduler goes through [`diffuse_core::compat::resolve_sampler`]: it runs as diffusers runs it
//! on the model's objective, converted, or is refused in one line. `diffuse sample`, `eval`, `serve` and
//! the distillation teachers load through it.

use super::{decode_latents, generate, GenerateOptions, GuidanceInterval, Progress, PromptEmbeds};
use crate::text::{ClipTextModel, ClipTokenizer};
use crate::weights::{resolve_model_folder, ModelFolder};
use crate::{AutoencoderKL, Error, Network, Result};
use candle_core::{DType, Device, Tensor};
use diffuse_core::compat::{self, Cell, Objective};
use diffuse_core::config::SchedulerConfig;
use diffuse_core::sampler::{Sampler, SamplerOptions};
use serde_json::{Map, Value};
use std::ops::ControlFlow;
use std::path::Path;

/// Denoising steps when neither the caller nor the scheduler config (`num_inference_steps`,
/// which a distilled student records) gives a number.
pub const DEFAULT_STEPS: usize = 50;

/// The scheduler of a folder that has none (a bare UNet or DiT folder).
pub const DEFAULT_SCHEDULER: &str = "DDIMScheduler";

/// How to load a folder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Load `unet/` (`transformer/`) even when the folder has EMA weights beside it.
    pub no_ema: bool,
    /// The network's precision; the VAE stays f32 (it decodes once per image).
    pub dtype: DType,
    /// A scheduler config to use instead of the folder's.
    pub scheduler: Option<Map<String, Value>>,
    /// The pipeline's default sampler (a name of [`compat::SAMPLERS`] or a diffusers class
    /// name) instead of its own scheduler; checked against the model's objective at load.
    pub sampler: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            no_ema: false,
            dtype: DType::F32,
            scheduler: None,
            sampler: None,
        }
    }
}

/// diffusers' `StableDiffusionPipeline.__call__` default `guidance_scale`.
pub const SD_GUIDANCE: f64 = 7.5;

/// The text side of a text-to-image pipeline: `tokenizer/` and `text_encoder/`.
pub struct PromptEncoder {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
}

impl PromptEncoder {
    /// Loads `tokenizer_dir` and `encoder_dir` and checks that they fit each other.
    pub fn load(tokenizer_dir: &Path, encoder_dir: &Path, device: &Device) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_folder(tokenizer_dir)?;
        let (encoder, _) = ClipTextModel::load(encoder_dir, device)?;
        let c = encoder.config();
        if tokenizer.id_limit() as usize > c.vocab_size {
            return Err(Error::Config(format!(
                "{}: the tokenizer has ids up to {} but the text encoder's vocab_size is {} ({}): they do not belong together",
                tokenizer_dir.display(),
                tokenizer.id_limit() - 1,
                c.vocab_size,
                encoder_dir.display()
            )));
        }
        Ok(PromptEncoder { tokenizer, encoder })
    }

    /// The text encoder's layer count: the largest `clip_skip`.
    pub fn layers(&self) -> usize {
        self.encoder.config().num_hidden_layers
    }

    /// Prompt embeddings `[K, L, d]` of `prompts` (the text encoder's last hidden states, as
    /// SD 1.x/2.x pipelines take them, or with diffusers' `clip_skip` k ≥ 1 the normed output
    /// of layer N − k): each distinct prompt is encoded once.
    pub fn encode(&self, prompts: &[String], clip_skip: usize, device: &Device) -> Result<Tensor> {
        let mut distinct: Vec<&String> = Vec::new();
        let rows: Vec<u32> = prompts
            .iter()
            .map(|p| match distinct.iter().position(|d| *d == p) {
                Some(i) => i as u32,
                None => {
                    distinct.push(p);
                    (distinct.len() - 1) as u32
                }
            })
            .collect();
        let l = self.tokenizer.model_max_length();
        let (ids, _) = self.tokenizer.encode_batch(&distinct, l, device)?;
        let emb = self.encoder.prompt_embeds(&ids, None, clip_skip)?; // [distinct, L, d]
        let rows = Tensor::from_vec(rows, prompts.len(), device)?;
        Ok(emb.index_select(&rows, 0)?)
    }
}

/// A loaded pipeline: network, VAE, scheduler config and the device they live on.
pub struct Pipeline {
    /// What the folder turned out to be.
    pub folder: ModelFolder,
    /// The denoising network (UNet or DiT).
    pub net: Network,
    /// The VAE of a latent pipeline: the network denoises its latents.
    pub vae: Option<AutoencoderKL>,
    /// The tokenizer and text encoder of a text-to-image pipeline.
    pub text: Option<PromptEncoder>,
    /// The folder's scheduler config as written (validated).
    pub scheduler: Map<String, Value>,
    /// The same, parsed: the model's own scheduler, whose prediction type is the objective.
    pub model_scheduler: SchedulerConfig,
    /// The sampler used when a caller names none: [`LoadOptions::sampler`], else the short
    /// name of the model's own scheduler.
    pub default_sampler: &'static str,
    pub device: Device,
}

/// Reads a JSON object file, with errors naming the file.
fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    match diffuse_core::pyjson::parse(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Config(format!(
            "{}: a scheduler config must be a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::Config(format!(
            "{}: malformed JSON: {e}",
            path.display()
        ))),
    }
}

impl Pipeline {
    /// Loads a diffusers pipeline folder or a bare UNet/DiT model folder onto `device`.
    pub fn load(dir: &Path, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let folder = resolve_model_folder(dir)?;
        let (net, vae) = crate::precision::load_as(&folder, opts.no_ema, opts.dtype, device)?;
        let text = match (net.context_dim(), &folder.tokenizer_dir, &folder.text_encoder_dir) {
            (None, _, _) => None,
            (Some(d), Some(tok), Some(_)) => {
                let enc = folder
                    .text_encoder_dir_to_load(opts.no_ema)
                    .expect("a text encoder");
                let p = PromptEncoder::load(tok, enc, device)?;
                if p.encoder.hidden_size() != d {
                    return Err(Error::Config(format!(
                        "{}: the text encoder's hidden_size is {} but the UNet's cross_attention_dim is {d}",
                        enc.display(),
                        p.encoder.hidden_size()
                    )));
                }
                Some(p)
            }
            (Some(_), _, _) => {
                return Err(Error::Config(format!(
                    "{}: a UNet2DConditionModel reads prompts: the pipeline needs tokenizer/ and text_encoder/ (model_index.json naming them), as a StableDiffusionPipeline has",
                    folder.root.display()
                )))
            }
        };
        let scheduler = match (&opts.scheduler, &folder.scheduler_config) {
            (Some(m), _) => m.clone(),
            (None, Some(p)) => read_json_object(p)?,
            (None, None) => Map::from_iter([("_class_name".into(), DEFAULT_SCHEDULER.into())]),
        };
        let model_scheduler =
            SchedulerConfig::from_json_map(&scheduler).map_err(|e| {
                match &folder.scheduler_config {
                    Some(p) if opts.scheduler.is_none() => {
                        Error::Config(format!("{}: {e}", p.display()))
                    }
                    _ => Error::Core(e),
                }
            })?;
        let default_sampler = match &opts.sampler {
            Some(s) => {
                compat::resolve_sampler(s, &model_scheduler)?;
                compat::canonical_name(s).expect("a resolved sampler has a name")
            }
            None => model_scheduler.class.short_name(),
        };
        Ok(Pipeline {
            folder,
            net,
            vae,
            text,
            scheduler,
            model_scheduler,
            default_sampler,
            device: device.clone(),
        })
    }

    /// How many times larger the images are than what the network denoises (the VAE's
    /// downscale; 1 in pixel space).
    pub fn downscale(&self) -> usize {
        self.vae.as_ref().map_or(1, |v| v.config().downscale())
    }

    /// (height, width) the network denoises: its `sample_size` (latent-sized for a latent
    /// pipeline).
    pub fn sample_hw(&self) -> Option<(usize, usize)> {
        self.net.sample_hw()
    }

    /// (height, width) of the images: [`Self::sample_hw`] times [`Self::downscale`].
    pub fn image_size(&self) -> Option<(usize, usize)> {
        let f = self.downscale();
        self.sample_hw().map(|(h, w)| (h * f, w * f))
    }

    /// Classes a caller may ask for: the class table minus its null class (at least 1); None
    /// for an unconditional network. A class-conditional network without a class table is an
    /// error.
    pub fn classes(&self) -> Result<Option<usize>> {
        match (self.net.is_class_conditional(), self.net.num_classes()) {
            (false, _) => Ok(None),
            (true, Some(n)) => Ok(Some(n.saturating_sub(1).max(1))),
            (true, None) => Err(Error::Config(
                "class conditioning without a class table (num_class_embeds) is not supported"
                    .into(),
            )),
        }
    }

    /// Labels for `n` images: `class` for all, else classes 0, 1, …, k−1 in turn; None for an
    /// unconditional network.
    pub fn labels_in_turn(&self, n: usize, class: Option<u32>) -> Result<Option<Vec<u32>>> {
        Ok(self.classes()?.map(|k| match class {
            Some(c) => vec![c; n],
            None => (0..n).map(|i| (i % k) as u32).collect(),
        }))
    }

    /// What the network was trained to predict (ε, x₀, v or a flow velocity).
    pub fn objective(&self) -> Objective {
        Objective::of(&self.model_scheduler)
    }

    /// Every sampler name with how it drives this model (supported, converted or refused).
    pub fn samplers(&self) -> Vec<Cell> {
        compat::compatible_samplers(self.objective())
    }

    /// Steps when the caller gives none: the scheduler's `num_inference_steps` (a distilled
    /// student records it), else the folder's recorded sampling steps
    /// ([`crate::weights::SamplingDefaults`]), else [`DEFAULT_STEPS`].
    pub fn default_steps(&self) -> usize {
        self.model_scheduler
            .num_inference_steps
            .or(self.folder.sampling.num_inference_steps)
            .unwrap_or(DEFAULT_STEPS)
    }

    /// Classifier-free guidance when the caller gives none: the folder's recorded scale for a
    /// class-conditional model with a class table or a text-to-image model (there diffusers'
    /// 7.5 when none is recorded), else 1 (off).
    pub fn default_guidance(&self) -> f64 {
        let recorded = self.folder.sampling.guidance_scale;
        match (self.net.num_classes(), &self.text) {
            (_, Some(_)) => recorded.unwrap_or(SD_GUIDANCE),
            (Some(_), None) => recorded.unwrap_or(1.0),
            (None, None) => 1.0,
        }
    }

    /// Prompt embeddings for `k` images from one or `k` prompts and (for guidance) one or `k`
    /// negative prompts — the empty prompt when none is given, as diffusers does — with
    /// diffusers' `clip_skip` (0: the last layer).
    pub fn prompt_embeds(
        &self,
        prompts: &[String],
        negative: &[String],
        k: usize,
        guidance_scale: f64,
        clip_skip: usize,
    ) -> Result<PromptEmbeds> {
        let Some(text) = &self.text else {
            return Err(Error::Input(
                "the model is not text-conditional: it takes no prompt".into(),
            ));
        };
        let per_image = |v: &[String], what: &str| -> Result<Vec<String>> {
            match v.len() {
                0 => Ok(vec![String::new(); k]),
                1 => Ok(vec![v[0].clone(); k]),
                n if n == k => Ok(v.to_vec()),
                n => Err(Error::Input(format!(
                    "{n} {what} for {k} images (give one or {k})"
                ))),
            }
        };
        if prompts.is_empty() {
            return Err(Error::Input(
                "the model is text-conditional: give a prompt".into(),
            ));
        }
        let encode = |v: Vec<String>| text.encode(&v, clip_skip, &self.device);
        let cond = encode(per_image(prompts, "prompts")?)?;
        let uncond = if guidance_scale != 1.0 {
            Some(encode(per_image(negative, "negative prompts")?)?)
        } else if !negative.is_empty() {
            return Err(Error::Input(
                "a negative prompt needs classifier-free guidance (a guidance scale other than 1)"
                    .into(),
            ));
        } else {
            None
        };
        Ok(PromptEmbeds { cond, uncond })
    }

    /// The guidance interval when the caller gives none: the folder's recorded one, if any.
    pub fn default_guidance_interval(&self) -> Option<GuidanceInterval> {
        self.folder.sampling.guidance_interval
    }

    /// The scheduler config that runs `sampler` (a name or diffusers class name; default
    /// [`Self::default_sampler`]) on this model, or [`Error::Compat`] naming the samplers that
    /// work.
    pub fn scheduler_config(&self, sampler: Option<&str>) -> Result<SchedulerConfig> {
        let name = sampler.unwrap_or(self.default_sampler);
        Ok(compat::resolve_sampler(name, &self.model_scheduler)?)
    }

    /// A sampler of [`Self::scheduler_config`] with `steps` steps (default: the config's
    /// `num_inference_steps`, else [`DEFAULT_STEPS`]).
    pub fn sampler(
        &self,
        sampler: Option<&str>,
        steps: Option<usize>,
        opts: SamplerOptions,
    ) -> Result<Sampler> {
        let config = self.scheduler_config(sampler)?;
        if let (None, None, Some(t)) = (sampler, steps, self.default_timesteps()) {
            return Ok(Sampler::with_timesteps(&config, t, opts)?);
        }
        let steps = steps.unwrap_or_else(|| self.default_steps());
        Ok(Sampler::with_options(&config, steps, opts)?)
    }

    /// The recorded timesteps of the pipeline's own sampler (a multistep flow consistency
    /// student), used when the caller gives neither sampler nor steps.
    pub fn default_timesteps(&self) -> Option<&[f64]> {
        self.folder.sampling.timesteps.as_deref()
    }

    /// A sampler over chosen timesteps (diffusers' `set_timesteps(timesteps=…)`): the
    /// intermediate times of multistep consistency sampling (LCMScheduler, FlowMatch Euler).
    pub fn sampler_at(
        &self,
        sampler: Option<&str>,
        timesteps: &[f64],
        opts: SamplerOptions,
    ) -> Result<Sampler> {
        let config = self.scheduler_config(sampler)?;
        Ok(Sampler::with_timesteps(&config, timesteps, opts)?)
    }

    /// What the network generates (latents for a latent pipeline), `[K, C, h, w]`: see
    /// [`super::generate`].
    pub fn generate_latents(
        &self,
        sampler: &Sampler,
        opts: &GenerateOptions,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        generate(&self.net, sampler, opts, &self.device, on_progress)
    }

    /// Latents → images `[K, C, h·f, w·f]`, `slice` latents at a time (0: all at once); pixel
    /// pipelines return their input.
    pub fn decode(&self, latents: &Tensor, slice: usize) -> Result<Tensor> {
        match &self.vae {
            Some(vae) => decode_latents(vae, latents, slice),
            None => Ok(latents.clone()),
        }
    }

    /// Channels of the images (the VAE's for a latent pipeline, else the network's).
    pub fn image_channels(&self) -> usize {
        match &self.vae {
            Some(v) => v.config().in_channels,
            None => self.net.in_channels(),
        }
    }

    /// Pixel images `[K, C, H, W]` in [−1, 1] and a pixel mask `[K, 1, H, W]` (1: regenerate)
    /// in the space the network denoises, for [`super::Edit`] ([`super::edit_space`]).
    pub fn to_denoising_space(
        &self,
        images: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        super::edit_space(self.vae.as_ref(), &images.to_device(&self.device)?, mask)
    }

    /// Images `[K, C, H, W]` in the model's output range (not clipped): generation, then
    /// decoding for a latent pipeline.
    pub fn generate(
        &self,
        sampler: &Sampler,
        opts: &GenerateOptions,
        vae_slice: usize,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        let latents = self.generate_latents(sampler, opts, on_progress)?;
        self.decode(&latents, vae_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights;

    const UNET: &str = r#"{"_class_name": "UNet2DModel", "sample_size": 8,
        "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"], "layers_per_block": 1,
        "norm_num_groups": 4, "num_class_embeds": 4}"#;

    /// A seeded class-conditional UNet folder, with a pipeline's scheduler when given.
    fn folder(scheduler: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::NetworkConfig::from_json_str(UNET).unwrap();
        let (_, varmap) = weights::build::<Network>(&cfg, &Device::Cpu).unwrap();
        cfg.seeded_init(&varmap, 1).unwrap();
        match scheduler {
            None => weights::save(&cfg, &varmap, dir.path(), DType::F32).unwrap(),
            Some(s) => {
                weights::save(&cfg, &varmap, &dir.path().join("unet"), DType::F32).unwrap();
                let sched = dir.path().join("scheduler");
                std::fs::create_dir_all(&sched).unwrap();
                std::fs::write(sched.join("scheduler_config.json"), s).unwrap();
                let index = weights::model_index("DDPMScheduler", false);
                std::fs::write(dir.path().join("model_index.json"), index.to_string()).unwrap();
            }
        }
        dir
    }

    #[test]
    fn a_bare_model_folder_samples_with_ddim_and_its_recorded_size() {
        let dir = folder(None);
        let p = Pipeline::load(dir.path(), &LoadOptions::default(), &Device::Cpu).unwrap();
        assert_eq!(p.scheduler["_class_name"], DEFAULT_SCHEDULER);
        assert_eq!(p.image_size(), Some((8, 8)));
        assert_eq!(p.downscale(), 1);
        assert_eq!(p.classes().unwrap(), Some(3));
        assert_eq!(
            p.labels_in_turn(5, None).unwrap(),
            Some(vec![0, 1, 2, 0, 1])
        );
        assert_eq!(p.labels_in_turn(2, Some(2)).unwrap(), Some(vec![2, 2]));
        let s = p.sampler(None, None, SamplerOptions::default()).unwrap();
        assert_eq!(s.len(), DEFAULT_STEPS);
        let opts = GenerateOptions {
            num_images: 2,
            batch_size: 2,
            size: (8, 8),
            class_labels: Some(vec![1]),
            ..Default::default()
        };
        let s = p
            .sampler(Some("ddim"), Some(2), SamplerOptions::default())
            .unwrap();
        let x = p
            .generate(&s, &opts, 0, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(x.dims(), [2, 1, 8, 8]);
    }

    #[test]
    fn the_pipeline_scheduler_gives_the_default_steps_and_the_sampler_can_be_swapped() {
        let dir = folder(Some(
            r#"{"_class_name": "DDPMScheduler", "num_inference_steps": 4}"#,
        ));
        let opts = LoadOptions {
            sampler: Some("euler".into()),
            ..Default::default()
        };
        let p = Pipeline::load(dir.path(), &opts, &Device::Cpu).unwrap();
        assert_eq!(p.default_sampler, "euler");
        assert_eq!(p.scheduler["_class_name"], "DDPMScheduler");
        let s = p.sampler(None, None, SamplerOptions::default()).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            p.scheduler_config(Some("ddim")).unwrap().class.class_name(),
            "DDIMScheduler"
        );
    }

    #[test]
    fn a_bad_scheduler_file_is_named_in_the_error() {
        let dir = folder(Some(r#"{"_class_name": "DDPMScheduler","#));
        let e = Pipeline::load(dir.path(), &LoadOptions::default(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("scheduler_config.json: malformed JSON"), "{e}");
        let dir = folder(Some(r#"{"_class_name": "KarrasVeScheduler"}"#));
        let e = Pipeline::load(dir.path(), &LoadOptions::default(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("scheduler_config.json") && e.contains("_class_name"),
            "{e}"
        );
    }
}

//! What the loop trains: a diffusion network (UNet or DiT, optionally a progressive student)
//! or an AutoencoderKL, with its loss and the files written beside its weights.

use super::config::*;
use super::io_err;
use crate::objective::{
    diffusion_loss_with_noise, vae_loss, ObjectiveConfig, Reconstruction, SigmaSampling, TrainRng,
};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use diffuse_core::config::{PredictionType, SchedulerConfig};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_data::datasets::{self, Split};
use diffuse_data::transform::Transform;
use diffuse_models::weights::build_vae;
use diffuse_models::{AutoencoderKL, AutoencoderKLConfig, Network, NetworkConfig};
use serde_json::{Map, Value};
use std::path::Path;

/// Files of a checkpoint as (path relative to it, bytes).
pub(super) type Files = Vec<(String, Vec<u8>)>;

/// What the loop trains: a diffusion network (UNet or DiT) or an AutoencoderKL.
pub(super) enum Net {
    Unet(Box<UnetTask>),
    Vae(Box<VaeTask>),
}

/// A diffusion network: a UNet or a DiT.
pub(super) struct UnetTask {
    pub(super) model: Network,
    pub(super) cfg: NetworkConfig,
    pub(super) schedule: NoiseSchedule,
    pub(super) objective: ObjectiveConfig,
    pub(super) sched_map: Map<String, Value>,
    pub(super) sched_cfg: SchedulerConfig,
    /// How the sample grids are drawn, recorded in `model_index.json` for `sample` and `serve`.
    pub(super) sampling: diffuse_models::weights::SamplingDefaults,
    /// For latent diffusion: the VAE (decodes the sample grids) and its folder's files, written
    /// as `vae/` of every checkpoint and of the output pipeline.
    pub(super) vae: Option<(AutoencoderKL, Files)>,
    /// `[distill]`: the teacher whose two DDIM steps each student step learns.
    pub(super) distill: Option<crate::progressive::Progressive>,
    /// `[consistency]`: CD or ECT.
    pub(super) consistency: Option<crate::consistency::Consistency>,
    /// The credit the training data's licence asks for, kept in `model_index.json`
    /// (`_diffuse_data_attribution`).
    pub(super) attribution: Option<String>,
    /// `data.vae`: images are encoded into the VAE's latents as they are drawn.
    pub(super) encode_images: bool,
    /// Text-to-image: captions, tokenizer and the jointly trained text encoder.
    pub(super) text: Option<crate::text::TextConditioning>,
}

pub(super) struct VaeTask {
    pub(super) model: AutoencoderKL,
    pub(super) cfg: AutoencoderKLConfig,
    pub(super) rec: Reconstruction,
    pub(super) section: VaeSection,
    /// [n, c, size, size] held-out images for PSNR and the reconstruction grids.
    pub(super) holdout: Option<Tensor>,
}

pub(super) fn unet_task(
    config: &TrainConfig,
    mut model_map: Map<String, Value>,
    classes: Option<usize>,
    latent_vae: Option<&Path>,
    device: &Device,
) -> Result<(Net, candle_nn::VarMap)> {
    let t = &config.train;
    let vae = match latent_vae {
        Some(dir) => {
            let (vae, _) = diffuse_models::weights::load_vae(dir, device)?;
            let mut files = Vec::new();
            for f in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
                let bytes = std::fs::read(f.path()).map_err(io_err(&f.path()))?;
                files.push((format!("vae/{}", f.file_name().to_string_lossy()), bytes));
            }
            Some((vae, files))
        }
        None => None,
    };
    // A class table with one extra null class.
    let kind = match model_map.remove("type") {
        None => "unet".to_string(),
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(Error::Invalid(format!(
                "model.type: expected a string (unet, dit, {TEXT_UNET}), got {v}"
            )))
        }
    };
    match kind.as_str() {
        "unet" => {
            model_map
                .entry("_class_name")
                .or_insert("UNet2DModel".into());
            if let Some(k) = classes {
                model_map.insert("num_class_embeds".into(), (k + 1).into());
            }
        }
        TEXT_UNET => {
            model_map.remove("_class_name");
            model_map.insert("_class_name".into(), "UNet2DConditionModel".into());
            let width = config.text_encoder.clone().unwrap_or_default().hidden_size;
            match model_map.get("cross_attention_dim") {
                None => {
                    model_map.insert("cross_attention_dim".into(), width.into());
                }
                Some(v) if v.as_u64() == Some(width as u64) => {}
                Some(v) => {
                    return Err(Error::Invalid(format!(
                        "[model] cross_attention_dim = {v} must equal text_encoder.hidden_size = {width} (the UNet reads the encoder's hidden states); leave it out"
                    )))
                }
            }
        }
        "dit" => {
            model_map
                .entry("_class_name")
                .or_insert("DiTTransformer2DModel".into());
            // The DiT's label table always has the null class as its extra last row.
            model_map.insert("num_embeds_ada_norm".into(), classes.unwrap_or(0).into());
        }
        other => {
            return Err(Error::Invalid(format!(
                "model.type: unknown value {other:?}; allowed: unet, dit, {TEXT_UNET}"
            )))
        }
    }
    let unet_cfg = NetworkConfig::from_json_str(&Value::Object(model_map).to_string())
        .map_err(|e| Error::Invalid(format!("[model] ({kind}): {e}")))?;
    let mut sched_map = config.scheduler.clone();
    let edm = t.prediction_type == Prediction::Edm;
    let default_class = if edm {
        "EDMEulerScheduler"
    } else {
        "DDPMScheduler"
    };
    sched_map
        .entry("_class_name")
        .or_insert(default_class.into());
    let prediction = t.prediction_type.to_core();
    if prediction != PredictionType::Flow {
        sched_map.insert("prediction_type".into(), prediction.name().into());
    }
    let parsed_class = SchedulerConfig::from_json_map(&sched_map).map(|c| c.class);
    let flow_class = parsed_class.as_ref().is_ok_and(|c| c.is_flow());
    let edm_class = parsed_class.as_ref().is_ok_and(|c| c.is_edm());
    if edm != edm_class {
        return Err(Error::Invalid(if edm {
            "train.prediction_type = \"edm\" needs an EDM scheduler: leave [scheduler] _class_name out or set it to EDMEulerScheduler or EDMDPMSolverMultistepScheduler".to_string()
        } else {
            format!(
                "[scheduler] is an EDM scheduler but train.prediction_type is {:?}; set prediction_type = \"edm\"",
                config_name(&t.prediction_type)
            )
        }));
    }
    // The pipeline's scheduler/ must be one diffusers can load.
    if let Some(c) = parsed_class.as_ref().ok().filter(|c| !c.in_diffusers()) {
        return Err(Error::Invalid(format!(
            "[scheduler] _class_name {:?} is diffuse's own sampler and cannot be a pipeline's \
             scheduler (diffusers has no such class); train with EDMEulerScheduler and sample \
             with `--sampler {}`",
            c.class_name(),
            c.short_name()
        )));
    }
    if edm && t.snr_gamma.is_some() {
        return Err(Error::Invalid(
            "train.snr_gamma: EDM weighs its loss by λ(σ) already; remove snr_gamma".into(),
        ));
    }
    if prediction == PredictionType::Flow && !flow_class {
        sched_map.insert(
            "_class_name".into(),
            "FlowMatchEulerDiscreteScheduler".into(),
        );
    } else if prediction != PredictionType::Flow && flow_class {
        return Err(Error::Invalid(format!(
            "[scheduler] is a flow-matching scheduler but train.prediction_type is {:?}; set prediction_type = \"flow\" or use a diffusion scheduler",
            config_name(&t.prediction_type)
        )));
    }
    let sched_cfg = SchedulerConfig::from_json_map(&sched_map)?;
    let schedule = if prediction == PredictionType::Flow || edm {
        NoiseSchedule::from_config(&SchedulerConfig::default_for(
            diffuse_core::config::SchedulerClass::Ddpm,
        ))?
    } else {
        NoiseSchedule::from_config(&sched_cfg)?
    };

    let (model, varmap) = diffuse_models::weights::build::<Network>(&unet_cfg, device)?;
    let objective = ObjectiveConfig {
        prediction,
        min_snr_gamma: t.snr_gamma,
        cond_dropout: t.cond_dropout,
        null_class: classes.map(|k| k as u32),
        sigma_sampling: SigmaSampling::new(
            t.flow_sigma_sampling,
            t.flow_logit_mean,
            t.flow_logit_std,
        )?,
        // SD3 trains and samples with the same shift (FlowMatchEulerDiscreteScheduler's).
        flow_shift: sched_cfg.shift,
        flow_num_train_timesteps: sched_cfg.num_train_timesteps,
        edm: edm.then(|| crate::objective::EdmTraining {
            precond: diffuse_core::edm::Precond::new(sched_cfg.sigma_data),
            p_mean: t.edm_p_mean,
            p_std: t.edm_p_std,
        }),
    };
    if edm && !(t.edm_p_std > 0.0 && t.edm_p_std.is_finite() && t.edm_p_mean.is_finite()) {
        return Err(Error::Invalid(format!(
            "train.edm_p_std must be > 0 and edm_p_mean finite, got {} and {}",
            t.edm_p_mean, t.edm_p_std
        )));
    }
    if let Some((v, _)) = &vae {
        diffuse_models::pipeline::check_latent_channels(&unet_cfg, v.config())?;
    }
    let distill = match &config.distill {
        Some(section) => Some(crate::progressive::Progressive::new(
            section, &sched_cfg, &schedule, classes, device,
        )?),
        None => None,
    };
    let consistency = match &config.consistency {
        Some(section) => Some(crate::consistency::Consistency::new(
            section, &sched_cfg, classes, device,
        )?),
        None => None,
    };
    // Grids sample flow, EDM and consistency (LCM) models with the pipeline's own scheduler
    // (others with DDIM), so their step count is a default for the pipeline only then.
    let own_sampler = sched_cfg.class.is_flow()
        || sched_cfg.class.is_edm()
        || sched_cfg.class == diffuse_core::config::SchedulerClass::Lcm;
    let sampling = diffuse_models::weights::SamplingDefaults {
        num_inference_steps: own_sampler.then_some(t.sample_steps),
        guidance_scale: (classes.is_some() || kind == TEXT_UNET).then_some(t.sample_guidance),
        guidance_interval: (classes.is_some() || kind == TEXT_UNET)
            .then_some(t.sample_guidance_interval)
            .flatten(),
        // A flow consistency student's N > 1 steps at σ = 1, (N−1)/N, …, 1/N.
        timesteps: (consistency.is_some() && sched_cfg.class.is_flow() && t.sample_steps > 1).then(
            || {
                let (n, big_t) = (t.sample_steps, sched_cfg.num_train_timesteps as f64);
                (0..n)
                    .map(|k| big_t * (1.0 - k as f64 / n as f64))
                    .collect()
            },
        ),
    };
    let task = UnetTask {
        sampling,
        distill,
        consistency,
        attribution: None,
        encode_images: false,
        text: None,
        model,
        cfg: unet_cfg,
        schedule,
        objective,
        sched_map,
        sched_cfg,
        vae,
    };
    Ok((Net::Unet(Box::new(task)), varmap))
}

pub(super) fn vae_task(
    config: &TrainConfig,
    section: &VaeSection,
    mut model_map: Map<String, Value>,
    device: &Device,
) -> Result<(Net, candle_nn::VarMap)> {
    model_map
        .entry("_class_name")
        .or_insert("AutoencoderKL".into());
    let cfg = AutoencoderKLConfig::from_json_str(&Value::Object(model_map).to_string())?;
    let d = &config.data;
    let holdout = if section.eval_images > 0 {
        let test = datasets::open_with(&d.name, Split::Test, &d.open_options()).map_err(|e| {
            Error::Invalid(format!(
                "vae.eval_images: the held-out images come from the test split ({e}); set vae.eval_images = 0 to train without them"
            ))
        })?;
        let n = section.eval_images.min(test.len());
        let tf = Transform {
            size: d.size,
            fit: d.fit.into(),
            hflip: false,
        };
        let mut pixels = Vec::with_capacity(n * test.channels() * d.size * d.size);
        for i in 0..n {
            let s = test.get(i).map_err(|e| Error::Invalid(e.to_string()))?;
            pixels.extend(tf.apply(&s, false));
        }
        Some(Tensor::from_vec(
            pixels,
            (n, test.channels(), d.size, d.size),
            device,
        )?)
    } else {
        None
    };
    let (model, varmap) = build_vae(&cfg, device)?;
    let task = VaeTask {
        model,
        cfg,
        rec: section.loss,
        section: section.clone(),
        holdout,
    };
    Ok((Net::Vae(Box::new(task)), varmap))
}

impl Net {
    /// The model's folder name in checkpoints and the output (`unet`, `transformer`, `vae`;
    /// EMA in `*_ema`).
    pub(super) fn component(&self) -> &'static str {
        match self {
            Net::Unet(u) => u.cfg.component(),
            Net::Vae(_) => "vae",
        }
    }

    /// Files beside the weights in every checkpoint and the output: configs, and for a UNet or
    /// DiT the scheduler and `model_index.json` of a pipeline (and a text-to-image model's
    /// tokenizer and text encoder config).
    pub(super) fn files(&self) -> Result<Files> {
        let text = |v: &Value| diffuse_core::pyjson::to_string_pretty(v).into_bytes();
        let config = match self {
            Net::Unet(u) => u.cfg.to_json_string().into_bytes(),
            Net::Vae(v) => text(&serde_json::to_value(&v.cfg).expect("json")),
        };
        let c = self.component();
        let mut files = vec![
            (format!("{c}/config.json"), config.clone()),
            (format!("{c}_ema/config.json"), config),
        ];
        if let Net::Unet(u) = self {
            let sched = sched_cfg_json(&u.sched_map);
            let class = sched["_class_name"].as_str().unwrap_or("DDPMScheduler");
            let mut index = diffuse_models::weights::pipeline_index(&u.cfg, class, u.vae.is_some());
            u.sampling.write_into(&mut index);
            if let Some(a) = &u.attribution {
                index["_diffuse_data_attribution"] = a.as_str().into();
            }
            files.push(("scheduler/scheduler_config.json".into(), text(&sched)));
            files.push(("model_index.json".into(), text(&index)));
            if let Some((_, vae_files)) = &u.vae {
                files.extend(vae_files.iter().cloned());
            }
            if let Some(text) = &u.text {
                files.extend(text.files()?);
            }
        }
        Ok(files)
    }

    /// Seeded initialization of the fresh weights: PyTorch's layer defaults (UNet, VAE), the
    /// DiT paper's adaLN-Zero init for a DiT.
    pub(super) fn seeded_init(&self, varmap: &candle_nn::VarMap, seed: u64) -> Result<()> {
        match self {
            Net::Unet(u) => {
                u.cfg.seeded_init(varmap, seed)?;
                // The generic init ran over the text encoder too: give it its own.
                match &u.text {
                    Some(text) => text.reinit(varmap, seed),
                    None => Ok(()),
                }
            }
            Net::Vae(_) => Ok(diffuse_models::weights::seeded_init(varmap, seed)?),
        }
    }

    /// `train.gradient_checkpointing` on the trained model (previews and evaluations build
    /// their own models from the weights, without it).
    pub(super) fn set_gradient_checkpointing(&mut self, on: bool) {
        match self {
            Net::Unet(u) => u.model.set_gradient_checkpointing(on),
            Net::Vae(v) => v.model.set_gradient_checkpointing(on),
        }
    }

    /// Whether a variable is trained (diffusers keeps a UNet's Fourier projection fixed).
    pub(super) fn trainable(&self, name: &str) -> bool {
        match self {
            Net::Unet(u) => u.cfg.trainable(name),
            Net::Vae(_) => true,
        }
    }

    /// The loss of one batch at optimizer step `step`, and named parts of it; `low` is the
    /// network's low-precision copy under mixed precision.
    /// `indices`: the data set's items of the rows (captions of a text-to-image run).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn loss(
        &self,
        low: Option<&Network>,
        x0: &Tensor,
        noise: Option<&Tensor>,
        labels: Option<&[u32]>,
        indices: Option<&[usize]>,
        rng: &mut TrainRng,
        step: u64,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        // data.vae: the rows' latents, z = mean + std·ε (ε from the run's stream), scaled as
        // the pipeline's diffusion model sees them; the VAE itself is not trained.
        let encoded;
        let x0 = match self {
            Net::Unet(u) if u.encode_images => {
                let (vae, _) = u.vae.as_ref().expect("data.vae loads the VAE");
                let z = vae.encode(x0)?.sample(rng)?;
                encoded = vae.scale_latents(&z)?.detach();
                &encoded
            }
            _ => x0,
        };
        match self {
            Net::Unet(u) if u.text.is_some() => {
                let text = u.text.as_ref().expect("text");
                let indices = indices.ok_or_else(|| {
                    Error::Invalid(
                        "text-to-image training draws captioned images (data.name)".into(),
                    )
                })?;
                let context = text.embeddings(indices, rng, x0.device())?;
                let parts = crate::objective::diffusion_loss_with_context(
                    &u.model,
                    &u.schedule,
                    x0,
                    noise,
                    &context,
                    &u.objective,
                    rng,
                )?;
                Ok((parts.loss, vec![]))
            }
            Net::Unet(u) if u.consistency.is_some() => {
                let c = u.consistency.as_ref().expect("consistency");
                c.loss(low.unwrap_or(&u.model), x0, labels, &u.objective, rng, step)
            }
            Net::Unet(u) if u.distill.is_some() => {
                let p = u.distill.as_ref().expect("distill");
                let model = low.unwrap_or(&u.model);
                Ok((p.loss(model, x0, labels, &u.objective, rng)?, vec![]))
            }
            Net::Unet(u) => {
                let parts = diffusion_loss_with_noise(
                    low.unwrap_or(&u.model),
                    &u.schedule,
                    x0,
                    noise,
                    labels,
                    &u.objective,
                    rng,
                )?;
                Ok((parts.loss, vec![]))
            }
            Net::Vae(v) => {
                let warm = v.section.kl_warmup_steps;
                let ramp = if warm == 0 {
                    1.0
                } else {
                    ((step + 1) as f64 / warm as f64).min(1.0)
                };
                let beta = v.section.kl_weight * ramp;
                let parts = vae_loss(&v.model, x0, v.rec, beta, rng)?;
                Ok((
                    parts.loss,
                    vec![
                        ("reconstruction".into(), parts.reconstruction as f64),
                        ("kl".into(), parts.kl as f64),
                        ("kl_weight".into(), beta),
                    ],
                ))
            }
        }
    }
}

pub(super) fn sched_cfg_json(map: &Map<String, Value>) -> Value {
    let mut m = map.clone();
    m.entry("_diffusers_version").or_insert("0.42.1".into());
    Value::Object(m)
}

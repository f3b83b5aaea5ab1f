//! Preview grids of the EMA weights: samples (UNet, DiT) or held-out reconstructions (VAE)
//! written to `samples/step-N.png` and TensorBoard.

use super::config::*;
use super::io_err;
use super::net::*;
use crate::ema::Ema;
use crate::quality::{psnr, ssim};
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use diffuse_core::config::SchedulerConfig;
use diffuse_models::{AutoencoderKL, Network};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

impl Net {
    /// With the EMA weights: a grid of samples (UNet) or of held-out images over their
    /// reconstructions (VAE) at `path`; returns evaluation values (VAE: `eval/psnr`,
    /// `eval/ssim`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn preview(
        &self,
        varmap: &candle_nn::VarMap,
        names: &[String],
        ema: &Ema,
        classes: Option<usize>,
        t: &TrainSection,
        device: &Device,
        path: &Path,
    ) -> Result<Vec<(String, f64)>> {
        let tensors = ema_tensors(varmap, names, ema)?;
        let (grid, cols, metrics) = match self {
            Net::Unet(u) => {
                let prompts = match &u.text {
                    Some(text) => Some(grid_prompts(text, &tensors, device)?),
                    None => None,
                };
                let model: Network =
                    diffuse_models::weights::from_tensors(&u.cfg, tensors, device)?;
                let (mut images, cols) =
                    sample_grid(&model, &u.sched_cfg, classes, prompts, t, device)?;
                if let Some((vae, _)) = &u.vae {
                    images = diffuse_models::pipeline::decode_latents(vae, &images, 16)?;
                }
                (images, cols, vec![])
            }
            Net::Vae(v) => {
                let Some(x) = &v.holdout else {
                    return Ok(vec![]);
                };
                let model: AutoencoderKL =
                    diffuse_models::weights::from_tensors(&v.cfg, tensors, device)?;
                let n = x.dim(0)?;
                let rec = (0..n)
                    .step_by(64)
                    .map(|s| model.forward(&x.narrow(0, s, 64.min(n - s))?, None))
                    .collect::<Result<Vec<_>, _>>()?;
                let rec = Tensor::cat(&rec, 0)?;
                let mut metrics = vec![("eval/psnr".to_string(), psnr(&rec, x)?)];
                if x.dim(2)? >= 11 && x.dim(3)? >= 11 {
                    metrics.push(("eval/ssim".to_string(), ssim(&rec, x)?));
                }
                let k = n.min(8);
                let grid = Tensor::cat(&[x.narrow(0, 0, k)?, rec.narrow(0, 0, k)?], 0)?;
                (grid, k, metrics)
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let grid = diffuse_data::image_io::grid(&grid.to_device(&Device::Cpu)?, cols, 2, 1.0)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        diffuse_data::image_io::save_png(&grid, path).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(metrics)
    }
}

/// Writes `samples/step-N.png` with [`Net::preview`], logs it and its values to TensorBoard.
#[allow(clippy::too_many_arguments)]
pub(super) fn preview_and_log(
    net: &Net,
    varmap: &candle_nn::VarMap,
    vars: &[(String, Var)],
    ema: &Ema,
    classes: Option<usize>,
    t: &TrainSection,
    device: &Device,
    output: &Path,
    step: u64,
    tb: &mut crate::tensorboard::EventWriter,
) -> Result<Vec<(String, f64)>> {
    let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    let png_path = output.join("samples").join(format!("step-{step}.png"));
    let metrics = net.preview(varmap, &names, ema, classes, t, device, &png_path)?;
    let tb_io = |e| Error::Invalid(format!("tensorboard log: {e}"));
    for (k, v) in &metrics {
        tb.scalar(k, step as i64, *v as f32).map_err(tb_io)?;
    }
    if let (Ok(bytes), Ok(img)) = (std::fs::read(&png_path), image::open(&png_path)) {
        let tag = match net {
            Net::Unet(_) => "samples/ema",
            Net::Vae(_) => "reconstructions/ema",
        };
        tb.image_png(
            tag,
            step as i64,
            &bytes,
            img.width(),
            img.height(),
            if img.color().has_color() { 3 } else { 1 },
        )
        .map_err(tb_io)?;
    }
    Ok(metrics)
}

/// The EMA weights over the model's own: variables that are not trained (the Fourier
/// projection) have no shadow and keep their values.
pub(super) fn ema_tensors(
    varmap: &candle_nn::VarMap,
    names: &[String],
    ema: &Ema,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = diffuse_models::weights::detached_tensors(varmap);
    // Copies: the EMA updates its shadow in place while these may live on.
    let shadow = ema
        .shadow()
        .iter()
        .map(|s| s.copy())
        .collect::<candle_core::Result<Vec<_>>>()?;
    tensors.extend(names.iter().cloned().zip(shadow));
    Ok(tensors)
}

/// The sampler of grids and evaluations: `name` (a scheduler class or alias) over the training
/// schedule, else DDIM with trailing spacing — or flow-matching Euler for flow models.
pub(crate) fn preview_scheduler(
    sched_cfg: &SchedulerConfig,
    name: Option<&str>,
) -> Result<SchedulerConfig> {
    let flow = sched_cfg.class.is_flow();
    if (flow || sched_cfg.class.is_edm()) && name.is_none() {
        return Ok(sched_cfg.clone());
    }
    if sched_cfg.class.is_edm() {
        let name = name.expect("checked");
        return diffuse_core::compat::resolve_sampler(name, sched_cfg)
            .map_err(|e| crate::Error::Invalid(e.to_string()));
    }
    let mut map: Map<String, Value> = serde_json::from_value(json!({
        "_class_name": name.unwrap_or("DDIMScheduler"),
        "num_train_timesteps": sched_cfg.num_train_timesteps,
        "beta_start": sched_cfg.beta_start,
        "beta_end": sched_cfg.beta_end,
        "beta_schedule": sched_cfg.beta_schedule.name(),
        "prediction_type": sched_cfg.prediction_type.name(),
        "timestep_spacing": "trailing",
        "clip_sample": false,
    }))
    .expect("object");
    if flow {
        map.insert("shift".into(), sched_cfg.shift.into());
    }
    Ok(SchedulerConfig::from_json_map(&map)?)
}

/// Rows of a text-to-image grid: 8 training captions, each 8 times, embedded by the EMA text
/// encoder, with the empty prompt's embeddings for guidance.
fn grid_prompts(
    text: &crate::text::TextConditioning,
    tensors: &HashMap<String, Tensor>,
    device: &Device,
) -> Result<diffuse_models::pipeline::PromptEmbeds> {
    let encoder = text.encoder_from(tensors, device)?;
    let prompts: Vec<String> = text
        .grid_prompts(8)
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, 8))
        .collect();
    let embed = |p: &[String]| -> Result<Tensor> {
        Ok(encoder.forward(&text.ids(p, device)?)?.last_hidden_state)
    };
    Ok(diffuse_models::pipeline::PromptEmbeds {
        cond: embed(&prompts)?,
        uncond: Some(embed(&[String::new()])?.repeat((prompts.len(), 1, 1))?),
    })
}

/// Samples for a grid from `model` (the EMA weights): one row per class or prompt (or 8×8
/// unconditional), fixed seed. Returns the images and the grid's column count.
pub(super) fn sample_grid(
    model: &Network,
    sched_cfg: &SchedulerConfig,
    classes: Option<usize>,
    prompts: Option<diffuse_models::pipeline::PromptEmbeds>,
    t: &TrainSection,
    device: &Device,
) -> Result<(Tensor, usize)> {
    let sched = preview_scheduler(sched_cfg, None)?;
    let sampler = diffuse_core::sampler::Sampler::new(&sched, t.sample_steps)?;
    if let Some(p) = prompts {
        let n = p.cond.dim(0)?;
        let opts = diffuse_models::pipeline::GenerateOptions {
            num_images: n,
            batch_size: n.min(32),
            seed: 1234,
            size: model.sample_hw().unwrap_or((32, 32)),
            guidance_scale: t.sample_guidance,
            guidance_interval: t.sample_guidance_interval,
            prompt_embeds: Some(p),
            ..Default::default()
        };
        let images =
            diffuse_models::pipeline::generate(model, &sampler, &opts, device, &mut |_| {
                std::ops::ControlFlow::Continue(())
            })?;
        return Ok((images, 8));
    }
    let (labels, cols) = match classes {
        Some(k) => (
            (0..k as u32)
                .flat_map(|c| std::iter::repeat_n(c, 8))
                .collect::<Vec<_>>(),
            8,
        ),
        None => (vec![], 8),
    };
    let n = if labels.is_empty() { 64 } else { labels.len() };
    let size = model.sample_hw().unwrap_or((32, 32));
    let opts = diffuse_models::pipeline::GenerateOptions {
        num_images: n,
        batch_size: n.min(80),
        seed: 1234,
        size,
        class_labels: (!labels.is_empty()).then_some(labels),
        class_weights: None,
        guidance_scale: if classes.is_some() {
            t.sample_guidance
        } else {
            1.0
        },
        guidance_interval: t.sample_guidance_interval,
        null_class: None,
        prompt_embeds: None,
        initial_noise: None,
        edit: None,
    };
    let images = diffuse_models::pipeline::generate(model, &sampler, &opts, device, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    Ok((images, cols))
}

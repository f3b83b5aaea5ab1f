//! Image generation with a UNet or DiT, as diffusers' `DDPMPipeline` / `DiTPipeline` do it,
//! plus what a service needs: batching of K images in chunks, one noise stream per image (the
//! same seed gives the same image at any batch size), class labels and classifier-free
//! guidance. Latent diffusion: the same loop over an AutoencoderKL's latents, then
//! [`decode_latents`]. [`Pipeline`] loads a folder (network, VAE, scheduler config) for it.

use crate::denoise::{NetDenoiser, PairGuidance, SoftClassGuidance};
use crate::net::{Network, NetworkConfig};
use crate::{AutoencoderKL, AutoencoderKLConfig, Error, Result, UNet2DConfig};
use candle_core::{DType, Device, Shape, Tensor};
use diffuse_core::denoiser::{ClassifierFreeGuidance, Denoiser};
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::edit::{img2img, inpaint};
use diffuse_core::sampler::{sample, Sampler, StepInfo};
use std::ops::ControlFlow;

mod load;
pub use diffuse_core::denoiser::GuidanceInterval;
pub use diffuse_core::sampler::edit::Inpaint;
pub use load::{
    LoadOptions, Pipeline, PromptEncoder, DEFAULT_SCHEDULER, DEFAULT_STEPS, SD_GUIDANCE,
};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub num_images: usize,
    /// Images denoised together (the last chunk may be smaller).
    pub batch_size: usize,
    /// Image i draws from stream (seed, i).
    pub seed: u64,
    /// Spatial size (height, width).
    pub size: (usize, usize),
    /// Class label per image (one value is used for all), for class-conditional models.
    pub class_labels: Option<Vec<u32>>,
    /// Instead of `class_labels`: `[K, classes]` weights per image over the model's classes
    /// (null included) mixing their embeddings ([`class_weights_between`]).
    pub class_weights: Option<Tensor>,
    /// Classifier-free guidance scale; 1 disables guidance.
    pub guidance_scale: f64,
    /// Guide only at noise levels σ in this interval (none: at every step).
    pub guidance_interval: Option<GuidanceInterval>,
    /// The "no class" label for guidance; default: the model's last class.
    pub null_class: Option<u32>,
    /// Prompt embeddings, for text-conditioned models ([`Pipeline::prompt_embeds`]).
    pub prompt_embeds: Option<PromptEmbeds>,
    /// A given x_T of shape [K, C, H, W] (unit variance, before init_noise_sigma).
    pub initial_noise: Option<Tensor>,
    /// Start from given images instead of pure noise (image-to-image, inpainting).
    pub edit: Option<Edit>,
}

/// A text-conditioned model's prompt embeddings (the text encoder's last hidden states), one
/// row per image or one row for all.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// `[1 or K, L, d]`.
    pub cond: Tensor,
    /// The negative (or empty) prompt's, the same shape: the unconditional half of
    /// classifier-free guidance (required when guiding).
    pub uncond: Option<Tensor>,
}

/// Images to edit, in the space the network denoises (latents for a latent pipeline:
/// [`Pipeline::to_denoising_space`] brings pixel images and masks there).
#[derive(Debug, Clone)]
pub struct Edit {
    /// `[1 or K, C, H, W]` in the model's range; one image is used for all K.
    pub images: Tensor,
    /// Where to regenerate (1) and keep (0), `[1 or K, 1, H, W]`; none: image-to-image.
    pub mask: Option<Tensor>,
    /// How much of the plan runs: 0 returns the images, 1 starts from pure noise.
    pub strength: f64,
    /// How the kept region is imposed (with a mask).
    pub inpaint: Inpaint,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            num_images: 1,
            batch_size: 16,
            seed: 0,
            size: (32, 32),
            class_labels: None,
            class_weights: None,
            guidance_scale: 1.0,
            guidance_interval: None,
            null_class: None,
            prompt_embeds: None,
            initial_noise: None,
            edit: None,
        }
    }
}

/// Progress: model calls done and in all.
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// Generates `num_images` images `[K, C, H, W]` in the model's output range (not clipped).
pub fn generate(
    model: &Network,
    sampler: &Sampler,
    opts: &GenerateOptions,
    device: &Device,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Tensor> {
    let k = opts.num_images;
    if k == 0 || opts.batch_size == 0 {
        return Err(Error::Input(
            "num_images and batch_size must be at least 1".into(),
        ));
    }
    let (h, w) = opts.size;
    let shape = (model.in_channels(), h, w);
    if let Some(n) = &opts.initial_noise {
        if n.dims() != [k, shape.0, h, w] {
            return Err(Error::Input(format!(
                "initial noise has shape {:?}; expected [{k}, {}, {h}, {w}]",
                n.dims(),
                shape.0
            )));
        }
    }
    if let Some(e) = &opts.edit {
        check_edit(e, k, shape)?;
        if opts.initial_noise.is_some() {
            return Err(Error::Input(
                "an edit starts from its images: give initial noise or images to edit, not both"
                    .into(),
            ));
        }
    }
    let text = check_prompts(model, opts, k)?;
    let labels = match &opts.class_weights {
        None if text.is_some() => None,
        None => labels_for(model, opts.class_labels.as_deref(), k)?,
        Some(w) => {
            check_weights(model, w, k, opts.class_labels.is_some())?;
            None
        }
    };
    let guided = opts.guidance_scale != 1.0;
    let null = if guided && text.is_none() {
        let classes = match model.num_classes() {
            Some(n) => n,
            None => return Err(Error::Input(
                "classifier-free guidance needs a class-conditional model with a class table (num_class_embeds, num_embeds_ada_norm)"
                    .into(),
            )),
        };
        let null = opts.null_class.unwrap_or(classes as u32 - 1);
        if null as usize >= classes {
            return Err(Error::Input(format!(
                "null class {null} out of range: the model has {classes} classes"
            )));
        }
        Some(null)
    } else {
        None
    };

    let guided_timesteps = opts
        .guidance_interval
        .map(|g| sampler.guided_timesteps(&g))
        .transpose()?;
    let chunks: Vec<(usize, usize)> = (0..k)
        .step_by(opts.batch_size)
        .map(|s| (s, opts.batch_size.min(k - s)))
        .collect();
    let total = chunks.len() * model_calls(sampler, opts.edit.as_ref())?;
    let mut done = 0usize;
    let mut outputs = Vec::with_capacity(chunks.len());
    for (start, n) in chunks {
        let mut noise =
            SeededNoise::from_streams((start..start + n).map(|i| (opts.seed, i as u64)));
        let chunk_labels = labels.as_ref().map(|l| l[start..start + n].to_vec());
        let label_tensor = match &chunk_labels {
            Some(l) => Some(Tensor::from_vec(l.clone(), n, device)?),
            None => None,
        };
        let plain = NetDenoiser {
            model,
            class_labels: label_tensor,
        };
        let cfg_den;
        let soft_den;
        let text_den;
        // This chunk's rows of a `[1 or K, L, d]` prompt tensor, on the device.
        let rows = |t: &Tensor| -> Result<Tensor> {
            let t = match t.dim(0)? {
                1 => t.repeat((n, 1, 1))?,
                _ => t.narrow(0, start, n)?,
            };
            Ok(t.to_dtype(DType::F32)?.to_device(device)?)
        };
        let den: &dyn Denoiser = match (null, &chunk_labels, &opts.class_weights, text) {
            (_, _, _, Some(p)) => {
                let cond = rows(&p.cond)?;
                text_den = PairGuidance {
                    model,
                    uncond: match &p.uncond {
                        Some(u) => rows(u)?,
                        None => cond.clone(),
                    },
                    cond,
                    scale: opts.guidance_scale,
                    guided: guided_timesteps.clone(),
                };
                &text_den
            }
            (_, _, Some(w), None) => {
                soft_den = SoftClassGuidance {
                    model,
                    weights: w.narrow(0, start, n)?.to_device(device)?,
                    null_label: null.unwrap_or(0),
                    scale: if null.is_some() {
                        opts.guidance_scale
                    } else {
                        1.0
                    },
                    guided: guided_timesteps.clone(),
                };
                &soft_den
            }
            (Some(null_label), Some(l), None, None) => {
                cfg_den = ClassifierFreeGuidance {
                    model,
                    labels: l.clone(),
                    null_label,
                    scales: vec![opts.guidance_scale; n],
                    guided: guided_timesteps.clone(),
                };
                &cfg_den
            }
            _ => &plain,
        };
        let mut cancelled = false;
        let mut on_step = |_: StepInfo<'_>| {
            done += 1;
            let flow = on_progress(Progress { done, total });
            cancelled = flow.is_break();
            flow
        };
        let out = match &opts.edit {
            None => {
                let x_t = match &opts.initial_noise {
                    Some(t) => t
                        .narrow(0, start, n)?
                        .to_dtype(DType::F32)?
                        .to_device(device)?,
                    None => noise.randn(&Shape::from((n, shape.0, h, w)), DType::F32, device)?,
                };
                sample(sampler, den, &x_t, &mut noise, &mut on_step)
            }
            // An edit draws its noise itself (first: strength 1 starts from the same x_T).
            Some(e) => {
                // This chunk's rows only, then to the device (not all K for every chunk).
                let rows = |t: &Tensor| -> Result<Tensor> {
                    let (t, copies) = match t.dim(0)? {
                        1 => (t.clone(), n),
                        _ => (t.narrow(0, start, n)?, 1),
                    };
                    let t = t.to_dtype(DType::F32)?.to_device(device)?;
                    Ok(t.repeat((copies, 1, 1, 1))?)
                };
                let x0 = rows(&e.images)?;
                match &e.mask {
                    None => img2img(sampler, den, &x0, e.strength, &mut noise, &mut on_step),
                    Some(m) => inpaint(
                        sampler,
                        den,
                        &x0,
                        &rows(m)?,
                        e.strength,
                        e.inpaint,
                        &mut noise,
                        &mut on_step,
                    ),
                }
            }
        };
        if cancelled {
            return Err(Error::Input("generation cancelled".into()));
        }
        outputs.push(out?);
    }
    Ok(Tensor::cat(&outputs, 0)?)
}

/// ODE inversion of images `[K, C, H, W]` in the denoising space to the unit noise x_T that
/// [`generate`] (as `initial_noise`, same sampler) turns back into them:
/// [`diffuse_core::sampler::edit::invert`] with the class labels (one or K; no guidance), in
/// chunks of `batch_size`, divided by init_noise_sigma.
pub fn invert_images(
    model: &Network,
    sampler: &Sampler,
    images: &Tensor,
    class_labels: Option<&[u32]>,
    batch_size: usize,
    device: &Device,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Tensor> {
    let k = images.dim(0)?;
    let labels = labels_for(model, class_labels, k)?;
    let batch_size = batch_size.max(1);
    let total = k.div_ceil(batch_size) * sampler.len();
    let mut done = 0;
    let mut out = Vec::new();
    for start in (0..k).step_by(batch_size) {
        let n = batch_size.min(k - start);
        let x0 = images
            .narrow(0, start, n)?
            .to_dtype(DType::F32)?
            .to_device(device)?;
        let class_labels = match &labels {
            Some(l) => Some(Tensor::from_vec(l[start..start + n].to_vec(), n, device)?),
            None => None,
        };
        let den = NetDenoiser {
            model,
            class_labels,
        };
        let x_t = diffuse_core::sampler::edit::invert(sampler, &den, &x0, 0, &mut |_| {
            done += 1;
            on_progress(Progress { done, total })
        })?;
        out.push((x_t / sampler.init_noise_sigma())?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// The prompt embeddings of a text-conditioned `model` (None for another model): present,
/// `[1 or K, L, cross_attention_dim]`, with an unconditional half when guiding, and no class
/// labels beside them.
fn check_prompts<'a>(
    model: &Network,
    opts: &'a GenerateOptions,
    k: usize,
) -> Result<Option<&'a PromptEmbeds>> {
    let (d, p) = match (model.context_dim(), &opts.prompt_embeds) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(Error::Input(
                "the model is not text-conditional: it takes no prompt".into(),
            ))
        }
        (Some(_), None) => {
            return Err(Error::Input(
                "the model is text-conditional: give a prompt".into(),
            ))
        }
        (Some(d), Some(p)) => (d, p),
    };
    if opts.class_labels.is_some() || opts.class_weights.is_some() {
        return Err(Error::Input(
            "a text-conditional model takes a prompt, not class labels".into(),
        ));
    }
    let fits = |t: &Tensor| matches!(t.dims(), &[r, _, w] if (r == 1 || r == k) && w == d);
    if !fits(&p.cond) || p.uncond.as_ref().is_some_and(|u| u.dims() != p.cond.dims()) {
        return Err(Error::Input(format!(
            "prompt embeddings have shape {:?} (negative {:?}); expected [1 or {k}, L, {d}] for both",
            p.cond.dims(),
            p.uncond.as_ref().map(|u| u.dims().to_vec())
        )));
    }
    if opts.guidance_scale != 1.0 && p.uncond.is_none() {
        return Err(Error::Input(
            "classifier-free guidance needs the negative (or empty) prompt's embeddings".into(),
        ));
    }
    Ok(Some(p))
}

/// One class label per image from one or K given, as the model takes them.
fn labels_for(model: &Network, given: Option<&[u32]>, k: usize) -> Result<Option<Vec<u32>>> {
    match (given, model.is_class_conditional()) {
        (None, true) => Err(Error::Input(
            "the model is class-conditional: give a class label".into(),
        )),
        (Some(_), false) => Err(Error::Input(
            "the model is not class-conditional: it takes no class label".into(),
        )),
        (None, false) => Ok(None),
        (Some(l), true) if l.len() == 1 => Ok(Some(vec![l[0]; k])),
        (Some(l), true) if l.len() == k => Ok(Some(l.to_vec())),
        (Some(l), true) => Err(Error::Input(format!(
            "{} class labels for {k} images (give one or {k})",
            l.len()
        ))),
    }
}

/// Soft class labels `[K, classes]` fit a class-conditional `model` with a class table.
fn check_weights(model: &Network, w: &Tensor, k: usize, labels_too: bool) -> Result<()> {
    if labels_too {
        return Err(Error::Input(
            "give class labels or class weights, not both".into(),
        ));
    }
    let Some(classes) = model.num_classes() else {
        return Err(Error::Input(
            "class weights mix the embeddings of a class table: this model has none".into(),
        ));
    };
    if w.dims() != [k, classes] {
        return Err(Error::Input(format!(
            "class weights have shape {:?}; expected [{k}, {classes}]",
            w.dims()
        )));
    }
    Ok(())
}

/// Soft class labels `[frames, classes]` from class `a` to class `b`: frame i weighs them
/// (1 − t, t), t = i / (frames − 1), so its class embedding is their linear interpolation.
pub fn class_weights_between(
    classes: usize,
    a: u32,
    b: u32,
    frames: usize,
    device: &Device,
) -> Result<Tensor> {
    if a.max(b) as usize >= classes || frames < 2 {
        return Err(Error::Input(format!(
            "classes {a} and {b} of 0..{classes}, over {frames} frames (at least 2)"
        )));
    }
    let mut w = vec![0f32; frames * classes];
    for i in 0..frames {
        let t = i as f32 / (frames - 1) as f32;
        w[i * classes + a as usize] += 1.0 - t;
        w[i * classes + b as usize] += t;
    }
    Ok(Tensor::from_vec(w, (frames, classes), device)?)
}

/// Model calls per batch: the plan's, or what an edit runs of it.
pub fn model_calls(sampler: &Sampler, edit: Option<&Edit>) -> Result<usize> {
    let Some(e) = edit else {
        return Ok(sampler.len());
    };
    let run = sampler.len() - sampler.begin_index(e.strength)?;
    Ok(match (&e.mask, e.inpaint) {
        (Some(_), Inpaint::RePaint { resample, .. }) => run * resample.max(1),
        _ => run,
    })
}

/// Images and mask of `e` fit K images of `shape` (channels, h, w).
fn check_edit(e: &Edit, k: usize, (c, h, w): (usize, usize, usize)) -> Result<()> {
    let d = e.images.dims();
    if d.len() != 4 || d[1..] != [c, h, w] || (d[0] != 1 && d[0] != k) {
        return Err(Error::Input(format!(
            "images to edit have shape {d:?}; expected [1 or {k}, {c}, {h}, {w}]"
        )));
    }
    if let Some(m) = &e.mask {
        let md = m.dims();
        if md.len() != 4 || md[1..] != [1, h, w] || (md[0] != 1 && md[0] != k) {
            return Err(Error::Input(format!(
                "mask has shape {md:?}; expected [1 or {k}, 1, {h}, {w}]"
            )));
        }
    }
    if !(0.0..=1.0).contains(&e.strength) {
        return Err(Error::Input(format!(
            "strength must be in [0, 1], got {}",
            e.strength
        )));
    }
    Ok(())
}

/// A UNet can denoise a VAE's latents only if both sides have `latent_channels` channels.
pub fn check_latent_pair(unet: &UNet2DConfig, vae: &AutoencoderKLConfig) -> Result<()> {
    check_latent_channels(&NetworkConfig::UNet(unet.clone()), vae)
}

/// A UNet or DiT can denoise a VAE's latents only if it takes `latent_channels` channels and
/// predicts as many (a DiT with `learn_sigma` twice as many).
pub fn check_latent_channels(net: &NetworkConfig, vae: &AutoencoderKLConfig) -> Result<()> {
    let l = vae.latent_channels;
    let (i, o) = (net.in_channels(), net.out_channels());
    let learn_sigma = matches!(net, NetworkConfig::DiT(_)) && o == 2 * l;
    if i != l || (o != l && !learn_sigma) {
        let (c, name) = match net {
            NetworkConfig::UNet(_) | NetworkConfig::UNetCond(_) => ("unet", "UNet"),
            NetworkConfig::DiT(_) => ("transformer", "DiT"),
        };
        return Err(Error::Config(format!(
            "the VAE has latent_channels {l} but the {name} has in_channels {i} and out_channels {o}: \
             it must take and predict the VAE's latents (vae/config.json, {c}/config.json)"
        )));
    }
    Ok(())
}

/// Latents as the diffusion model produced them (scaled) → images `[K, C, H·f, W·f]`:
/// decode(z / scaling_factor + shift_factor), `slice` latents at a time (0: all at once).
pub fn decode_latents(vae: &AutoencoderKL, latents: &Tensor, slice: usize) -> Result<Tensor> {
    vae.decode_sliced(&vae.unscale_latents(latents)?, slice)
}

/// Pixel images `[K, C, H, W]` in [−1, 1] and a pixel mask `[K, 1, H, W]` (1: regenerate) in
/// the space the network denoises, on the images' device. With a VAE (latent pipeline) the
/// images are encoded (the posterior mean, scaled as in training) and the mask shrunk by the
/// VAE's downscale, a latent regenerated where any of its pixels is; without, they are returned.
pub fn edit_space(
    vae: Option<&AutoencoderKL>,
    images: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let mask = mask.map(|m| m.to_device(images.device())).transpose()?;
    match vae {
        None => Ok((images.clone(), mask)),
        Some(vae) => {
            let z = vae.scale_latents(&vae.encode(images)?.mean)?;
            let mask = mask
                .map(|m| m.max_pool2d(vae.config().downscale()))
                .transpose()?;
            Ok((z.to_dtype(candle_core::DType::F32)?, mask))
        }
    }
}

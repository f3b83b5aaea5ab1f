//! `diffuse sample`: generate images from a diffusers pipeline or model folder (UNet or DiT);
//! for a latent pipeline (`vae/` beside `unet/` or `transformer/`) the network denoises latents
//! and the VAE decodes them; a text-to-image pipeline (StableDiffusionPipeline) draws
//! `--prompt`.

use crate::common::GuidanceChoice;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use diffuse_core::sampler::SamplerOptions;
use diffuse_data::image_io;
use diffuse_models::pipeline::{Edit, GenerateOptions, Inpaint, LoadOptions, Pipeline};
use indicatif::{ProgressBar, ProgressStyle};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers pipeline folder (model_index.json, unet/ or transformer/ (DiT), scheduler/,
    /// and vae/ for latent diffusion) or a UNet or DiT model folder.
    #[arg(long)]
    model: PathBuf,
    /// Sampler: ddpm, ddim, plms, euler, euler_a, heun, dpmpp_2m, unipc, lcm, flow_euler, flow_heun,
    /// edm_euler, edm_dpmpp_2m (or a diffusers scheduler class name). Default: the pipeline's
    /// scheduler. Which samplers drive which models (ε, x₀, v, flow, EDM): docs/samplers.md; a sampler that cannot drive the
    /// model is refused with the list of those that can.
    #[arg(long)]
    sampler: Option<String>,
    /// A scheduler_config.json (default: the pipeline's, else DDIMScheduler's defaults).
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// Number of denoising steps (default: the scheduler config's `num_inference_steps`, which
    /// a distilled student records, else 50).
    #[arg(long)]
    steps: Option<usize>,
    /// The timesteps themselves, noisiest first (LCM: training timesteps such as 999,499;
    /// flow: σ·1000 such as 1000,500): a consistency model's intermediate times. Instead of
    /// --steps.
    #[arg(long, value_delimiter = ',', conflicts_with = "steps")]
    timesteps: Option<Vec<f64>>,
    /// Consistency γ-sampling (lcm, stochastic flow_euler): each step jumps to (1 − γ)·t_next
    /// and is noised to t_next; 1 re-noises from x̂₀ (diffusers' LCMScheduler), 0 is
    /// deterministic.
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// DDIM η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Class label for class-conditional models.
    #[arg(long = "class")]
    class_label: Option<u32>,
    /// Text-to-image pipelines (StableDiffusionPipeline): what to draw. Once for all images, or
    /// once per image.
    #[arg(long)]
    prompt: Vec<String>,
    /// Text-to-image: what to steer away from (the unconditional half of guidance; default the
    /// empty prompt). Once for all images, or once per image.
    #[arg(long)]
    negative_prompt: Vec<String>,
    /// Text-to-image: take the prompt embeddings this many layers before the text encoder's
    /// last (diffusers' `clip_skip`; 0: the last layer, as SD 1.x/2.x were trained).
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    /// Classifier-free guidance scale (1 = off); the null class is the model's last class, or
    /// the negative prompt. Default: the scale the pipeline records (`diffuse train`'s
    /// `sample_guidance`), else 7.5 for text-to-image (as diffusers) and 1 for others.
    #[arg(long)]
    guidance_scale: Option<f64>,
    /// The null ("unconditional") class for guidance.
    #[arg(long)]
    null_class: Option<u32>,
    /// Guide only at noise levels σ (EDM's σ/α) in LO,HI, e.g. 0.3,5 (Kynkäänniemi et al.
    /// 2024); `all` guides every step. Default: the pipeline's recorded interval, else all.
    #[arg(long, value_parser = crate::common::parse_guidance_interval)]
    guidance_interval: Option<GuidanceChoice>,
    #[arg(long, default_value_t = 16)]
    num_images: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size (default: the network's sample_size, times the VAE's downscale for latent
    /// pipelines).
    #[arg(long)]
    size: Option<usize>,
    /// Latent pipelines: decode this many latents at a time (0: each batch at once).
    #[arg(long, default_value_t = 8)]
    vae_slice: usize,
    /// Initial noise x_T: a safetensors file with one tensor `noise` [K, C, H, W] (latent-sized
    /// for latent pipelines).
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Output: a folder (PNGs + grid.png), a .png (the grid), or a .safetensors (tensor
    /// `images` [K, C, H, W], f32, unclipped).
    #[arg(long, default_value = "samples")]
    output: PathBuf,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The denoising network's precision: f32, bf16 or f16 (the sampler and a VAE stay f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Use `unet/` (`transformer/`) even when the folder has EMA weights in `unet_ema/`
    /// (`transformer_ema/`) (default: EMA).
    #[arg(long)]
    no_ema: bool,
    #[command(flatten)]
    edit: EditArgs,
}

/// Editing: start from an image instead of pure noise (docs/editing.md).
#[derive(clap::Args)]
pub struct EditArgs {
    /// Image-to-image (SDEdit): start from this image noised to `--strength`; with
    /// `--num-images` > 1, variations of it. A folder: each of its images once, in name order
    /// (`--num-images` is their count). Other sizes and channel counts are converted and
    /// fitted (`--fit`) as `data` does.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// How much of the plan runs from the image: 0 returns it, 1 starts from pure noise.
    /// Default 0.8, or 1 with `--mask`.
    #[arg(long)]
    strength: Option<f64>,
    /// Inpainting: regenerate where this image is white, keep where it is black (needs
    /// `--init-image`).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// How the kept region is imposed: blend (diffusers' inpaint pipelines) or repaint
    /// (RePaint resampling: `--jump`, `--resample`).
    #[arg(long, value_enum, default_value = "blend")]
    inpaint: InpaintMethod,
    /// RePaint: steps per jump back.
    #[arg(long, default_value_t = 10)]
    jump: usize,
    /// RePaint: times each block of `--jump` steps is denoised (1: no resampling).
    #[arg(long, default_value_t = 10)]
    resample: usize,
    /// How the init image and mask are brought to the model's size: pad, resize or center_crop.
    #[arg(long, default_value = "center_crop", value_parser = crate::common::parse_fit)]
    fit: diffuse_data::transform::Fit,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InpaintMethod {
    Blend,
    Repaint,
}

impl EditArgs {
    /// The edit the flags ask for, in the pipeline's denoising space, at `size` (the
    /// network's h, w); the conversions done to the files are printed.
    fn load(&self, pipe: &Pipeline, hw: (usize, usize), quiet: bool) -> Result<Option<Edit>> {
        let Some(path) = &self.init_image else {
            if self.mask.is_some() || self.strength.is_some() {
                bail!("--mask and --strength edit an image: give it with --init-image");
            }
            return Ok(None);
        };
        let size = crate::common::edit_size(pipe, hw)?;
        let files = match path.is_dir() {
            true => diffuse_data::datasets::images_in(path)?,
            false => vec![path.clone()],
        };
        if files.is_empty() {
            bail!(
                "--init-image {}: no PNG, JPEG or WebP images in the folder",
                path.display()
            );
        }
        let images = files
            .iter()
            .map(|f| {
                crate::common::load_edit_image(pipe, size, f, self.fit, "--init-image ", quiet)
            })
            .collect::<Result<Vec<_>>>()?;
        let image = Tensor::cat(&images, 0)?;
        let mask = match &self.mask {
            Some(m) => {
                let (mask, notes) = image_io::load_mask(m, size, self.fit, &Device::Cpu)?;
                if !notes.is_empty() && !quiet {
                    eprintln!("--mask {}: {}", m.display(), notes.join(", "));
                }
                Some(mask)
            }
            None => None,
        };
        let strength = self
            .strength
            .unwrap_or(if mask.is_some() { 1.0 } else { 0.8 });
        if !(0.0..=1.0).contains(&strength) {
            bail!("--strength {strength}: must be between 0 and 1");
        }
        let (images, mask) = pipe.to_denoising_space(&image, mask.as_ref())?;
        Ok(Some(Edit {
            images,
            mask,
            strength,
            inpaint: match self.inpaint {
                InpaintMethod::Blend => Inpaint::Blend,
                InpaintMethod::Repaint => Inpaint::RePaint {
                    jump: self.jump,
                    resample: self.resample,
                },
            },
        }))
    }
}

pub fn run(args: Args) -> Result<()> {
    let dev = crate::common::device(&args.device)?;
    let dtype = diffuse_models::weights::parse_dtype(&args.dtype)
        .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    let scheduler = match &args.scheduler_config {
        Some(p) => Some(crate::common::read_json_object(p)?),
        None => None,
    };
    let load = LoadOptions {
        no_ema: args.no_ema,
        dtype,
        scheduler,
        sampler: args.sampler.clone(),
    };
    let pipe = Pipeline::load(&args.model, &load, &dev)?;
    if let (Some(ema), false, false) = (&pipe.folder.ema_net_dir, args.no_ema, args.quiet) {
        eprintln!(
            "using the EMA weights in {} (--no-ema for {}/)",
            ema.display(),
            pipe.folder
                .net_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
    }
    let opts = SamplerOptions {
        eta: args.eta,
        gamma: args.gamma,
        ..Default::default()
    };
    let sampler = match &args.timesteps {
        Some(t) => pipe.sampler_at(None, t, opts)?,
        None => pipe.sampler(None, args.steps, opts)?,
    };
    // Images are `f` times larger than what the network denoises.
    let f = pipe.downscale();
    let size = match (args.size, pipe.sample_hw()) {
        (Some(s), _) if s % f != 0 => {
            bail!("--size {s}: must be a multiple of the VAE's downscale factor {f}")
        }
        (Some(s), _) => (s / f, s / f),
        (None, Some(hw)) => hw,
        (None, None) => bail!("the model config has no sample_size: give --size"),
    };
    let initial_noise = match &args.noise {
        Some(p) => {
            let mut m = candle_core::safetensors::load(p, &Device::Cpu)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let t = m
                .remove("noise")
                .with_context(|| format!("{}: no tensor named `noise`", p.display()))?;
            Some(t)
        }
        None => None,
    };
    let num_images = initial_noise
        .as_ref()
        .map(|t| t.dim(0))
        .transpose()?
        .unwrap_or(args.num_images);
    let size = match &initial_noise {
        Some(t) => {
            let (_, _, h, w) = t.dims4()?;
            (h, w)
        }
        None => size,
    };
    let edit = args.edit.load(&pipe, size, args.quiet)?;
    // A folder of images to edit: one output each.
    let num_images = match &edit {
        Some(e) if e.images.dim(0)? > 1 => e.images.dim(0)?,
        _ => num_images,
    };
    let guidance_scale = args
        .guidance_scale
        .unwrap_or_else(|| pipe.default_guidance());
    let prompt_embeds = match (&pipe.text, args.prompt.is_empty()) {
        (Some(text), _) if args.clip_skip > text.layers() => bail!(
            "--clip-skip {}: the text encoder has {} layers; use 0..={}",
            args.clip_skip,
            text.layers(),
            text.layers()
        ),
        (Some(_), _) => Some(
            pipe.prompt_embeds(
                &args.prompt,
                &args.negative_prompt,
                num_images,
                guidance_scale,
                args.clip_skip,
            )
            .context("--prompt")?,
        ),
        (None, false) => bail!(
            "--prompt: {} is not a text-to-image pipeline (its network takes no prompt)",
            args.model.display()
        ),
        (None, true) if !args.negative_prompt.is_empty() => {
            bail!("--negative-prompt goes with --prompt and a text-to-image pipeline")
        }
        (None, true) if args.clip_skip > 0 => {
            bail!("--clip-skip goes with --prompt and a text-to-image pipeline")
        }
        (None, true) => None,
    };
    let opts = GenerateOptions {
        num_images,
        batch_size: args.batch_size,
        seed: args.seed,
        size,
        class_labels: args.class_label.map(|c| vec![c]),
        class_weights: None,
        guidance_scale,
        guidance_interval: GuidanceChoice::resolve(args.guidance_interval, &pipe),
        null_class: args.null_class,
        prompt_embeds,
        initial_noise,
        edit,
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} sampling [{bar:30}] {pos}/{len} model calls · {per_sec} · eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        b
    };
    let start = Instant::now();
    let stop = crate::common::stop_flag("writing no images");
    let calls = diffuse_models::pipeline::model_calls(&sampler, opts.edit.as_ref())?;
    let generated = pipe.generate_latents(&sampler, &opts, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        match stop.load(Ordering::SeqCst) {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    });
    if stop.load(Ordering::SeqCst) {
        bar.finish_and_clear();
        bail!("stopped before the last image was sampled; nothing was written");
    }
    let mut images = generated?;
    bar.finish_and_clear();
    if pipe.vae.is_some() {
        let t = Instant::now();
        images = pipe.decode(&images, args.vae_slice)?;
        if !args.quiet {
            eprintln!(
                "decoded {num_images} latents in {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    write_output(&images, &args.output)?;
    eprintln!(
        "{num_images} images in {secs:.2} s ({:.2} images/s, {} × {} model calls) → {}",
        num_images as f64 / secs,
        num_images.div_ceil(args.batch_size),
        calls,
        args.output.display()
    );
    Ok(())
}

/// Writes `[K, C, H, W]` images as safetensors, a grid PNG, or a folder of PNGs and a grid.
pub fn write_output(images: &Tensor, out: &Path) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    let images = images.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let k = images.dim(0)?;
    let cols = (k as f64).sqrt().ceil() as usize;
    match ext {
        "safetensors" => {
            let bytes =
                diffuse_models::weights::serialize_tensors(vec![("images".into(), images)])?;
            diffuse_data::fs::write_atomic(out, &bytes)?;
        }
        "png" => image_io::save_png(&image_io::grid(&images, cols, 2, 1.0)?, out)?,
        // A file type this cannot write is refused; any other name (`runs/g7.5`) is a folder.
        "jpg" | "jpeg" | "webp" | "gif" | "bmp" | "tif" | "tiff" | "pt" | "pth" | "bin" | "npy"
        | "npz" => bail!("--output: cannot write .{ext}; use a folder, .png or .safetensors"),
        _ => {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            for i in 0..k {
                image_io::save_png(&images.narrow(0, i, 1)?, &out.join(format!("{i:05}.png")))?;
            }
            image_io::save_png(
                &image_io::grid(&images, cols, 2, 1.0)?,
                &out.join("grid.png"),
            )?;
        }
    }
    Ok(())
}

//! `diffuse invert` and `diffuse interpolate`: ODE inversion of images to their x_T, and
//! interpolation between two images or two seeds by slerp in x_T, and between two classes by
//! linear interpolation of their embeddings (docs/editing.md).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor};
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::{Sampler, SamplerOptions};
use diffuse_data::image_io;
use diffuse_data::transform::Fit;
use diffuse_models::pipeline::{
    class_weights_between, invert_images, GenerateOptions, LoadOptions, Pipeline,
};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// What both commands load: the pipeline, its sampler and how images are fitted to it.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A diffusers pipeline folder or a UNet/DiT model folder (as `sample --model`).
    #[arg(long)]
    model: PathBuf,
    /// A deterministic sampler (ddim, euler, heun, dpmpp_2m, unipc, flow_euler, flow_heun,
    /// edm_euler, edm_dpmpp_2m);
    /// default: the pipeline's scheduler.
    #[arg(long)]
    sampler: Option<String>,
    /// Steps of the inversion and of the sampling that undoes it (default: the pipeline's).
    #[arg(long)]
    steps: Option<usize>,
    /// The class of the images, for class-conditional models.
    #[arg(long = "class")]
    class_label: Option<u32>,
    /// How images are brought to the model's size: pad, resize or center_crop.
    #[arg(long, default_value = "center_crop", value_parser = crate::common::parse_fit)]
    fit: Fit,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Use `unet/` (`transformer/`) even when the folder has EMA weights.
    #[arg(long)]
    no_ema: bool,
}

struct Loaded {
    pipe: Pipeline,
    sampler: Sampler,
    /// The network's (h, w).
    hw: (usize, usize),
}

impl ModelArgs {
    fn load(&self) -> Result<Loaded> {
        let dev = crate::common::device(&self.device)?;
        let load = LoadOptions {
            no_ema: self.no_ema,
            sampler: self.sampler.clone(),
            ..Default::default()
        };
        let pipe = Pipeline::load(&self.model, &load, &dev)?;
        let sampler = pipe.sampler(None, self.steps, SamplerOptions::default())?;
        let Some(hw) = pipe.sample_hw() else {
            bail!("the model config has no sample_size");
        };
        Ok(Loaded { pipe, sampler, hw })
    }

    /// An image file fitted to the model and brought to its denoising space, `[1, C, h, w]`.
    fn image(&self, l: &Loaded, path: &Path) -> Result<Tensor> {
        let size = crate::common::edit_size(&l.pipe, l.hw)?;
        let img = crate::common::load_edit_image(&l.pipe, size, path, self.fit, "", false)?;
        Ok(l.pipe.to_denoising_space(&img, None)?.0)
    }

    /// x_T of an image of class `class`: its inversion.
    fn invert(&self, l: &Loaded, path: &Path, class: Option<u32>) -> Result<Tensor> {
        let x0 = self.image(l, path)?;
        let labels = class.map(|c| vec![c]);
        Ok(invert_images(
            &l.pipe.net,
            &l.sampler,
            &x0,
            labels.as_deref(),
            1,
            &l.pipe.device,
            &mut |_| ControlFlow::Continue(()),
        )?)
    }
}

#[derive(clap::Args)]
pub struct InvertArgs {
    /// The image to invert.
    image: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// A safetensors file with the tensor `noise` [1, C, h, w]: `diffuse sample --noise` of it
    /// with the same model, sampler, steps and class gives the image back.
    #[arg(long)]
    output: PathBuf,
}

pub fn invert(args: InvertArgs) -> Result<()> {
    let l = args.model.load()?;
    let start = std::time::Instant::now();
    let x_t = args.model.invert(&l, &args.image, args.model.class_label)?;
    let bytes = diffuse_models::weights::serialize_tensors(vec![(
        "noise".into(),
        x_t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
    )])?;
    diffuse_data::fs::write_atomic(&args.output, &bytes)?;
    eprintln!(
        "{} → x_T {:?} in {:.2} s ({} {} steps) → {}",
        args.image.display(),
        x_t.dims(),
        start.elapsed().as_secs_f64(),
        l.sampler.len(),
        l.sampler.config().class.short_name(),
        args.output.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct InterpolateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The first image (inverted to its x_T); or give `--seeds`.
    #[arg(long, requires = "to")]
    from: Option<PathBuf>,
    /// The last image.
    #[arg(long, requires = "from")]
    to: Option<PathBuf>,
    /// Two seeds instead of images: the x_T that `sample --seed S` starts its first image from.
    #[arg(long, value_delimiter = ',', conflicts_with = "from")]
    seeds: Vec<u64>,
    /// Frames, both ends included.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// The class of the last frame (and of `--to`): the frames' class embeddings go linearly
    /// from `--class` to this one. `--seeds S,S` keeps the noise and changes only the class.
    #[arg(long, requires = "class_label")]
    to_class: Option<u32>,
    /// Classifier-free guidance scale of the frames (default: the pipeline's; inversion
    /// itself runs unguided, so 1 reproduces the ends best).
    #[arg(long)]
    guidance_scale: Option<f64>,
    /// The strip of frames as one PNG.
    #[arg(long, default_value = "interpolation.png")]
    output: PathBuf,
    /// Also an animated GIF of the frames, forth and back.
    #[arg(long)]
    gif: Option<PathBuf>,
}

pub fn interpolate(args: InterpolateArgs) -> Result<()> {
    if args.frames < 2 {
        bail!("--frames {}: give at least 2", args.frames);
    }
    let m = &args.model;
    let l = m.load()?;
    let (a, b) = match (&args.from, &args.to, args.seeds.as_slice()) {
        (Some(from), Some(to), []) => (
            m.invert(&l, from, m.class_label)?,
            m.invert(&l, to, args.to_class.or(m.class_label))?,
        ),
        (None, None, &[sa, sb]) => {
            let (h, w) = l.hw;
            let shape = Shape::from((1, l.pipe.net.in_channels(), h, w));
            let draw = |seed| -> Result<Tensor> {
                let mut n = SeededNoise::from_streams([(seed, 0)]);
                Ok(n.randn(&shape, DType::F32, &l.pipe.device)?)
            };
            (draw(sa)?, draw(sb)?)
        }
        _ => bail!("give --from A.png --to B.png, or --seeds A,B"),
    };
    let frames = (0..args.frames)
        .map(|i| {
            let t = i as f64 / (args.frames - 1) as f64;
            diffuse_core::sampler::edit::slerp(&a, &b, t)
        })
        .collect::<diffuse_core::Result<Vec<_>>>()?;
    let class_weights = match (m.class_label, args.to_class) {
        (Some(a), Some(b)) => {
            let Some(k) = l.pipe.net.num_classes() else {
                bail!("--to-class interpolates class embeddings: this model has no class table");
            };
            Some(class_weights_between(k, a, b, args.frames, &l.pipe.device)?)
        }
        _ => None,
    };
    let opts = GenerateOptions {
        num_images: args.frames,
        batch_size: args.frames,
        size: l.hw,
        class_labels: match class_weights {
            Some(_) => None,
            None => m.class_label.map(|c| vec![c]),
        },
        class_weights,
        guidance_scale: args
            .guidance_scale
            .unwrap_or_else(|| l.pipe.default_guidance()),
        guidance_interval: l.pipe.default_guidance_interval(),
        initial_noise: Some(Tensor::cat(&frames, 0)?),
        ..Default::default()
    };
    let images = l
        .pipe
        .generate(&l.sampler, &opts, 8, &mut |_| ControlFlow::Continue(()))?;
    let images = images.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    image_io::save_png(&image_io::grid(&images, args.frames, 2, 1.0)?, &args.output)?;
    if let Some(gif) = &args.gif {
        image_io::save_gif(&images, gif, 120)?;
    }
    eprintln!(
        "{} frames → {}{}",
        args.frames,
        args.output.display(),
        args.gif
            .as_ref()
            .map(|g| format!(" and {}", g.display()))
            .unwrap_or_default()
    );
    Ok(())
}

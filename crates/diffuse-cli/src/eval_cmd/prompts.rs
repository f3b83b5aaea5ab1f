//! `diffuse eval prompts`: a text-to-image model draws each prompt (captions of a captioned set,
//! seen in training or held out); each image's nearest training image by Inception features
//! decides whether it shows the prompt's class (`diffuse_eval::prompts`). Writes
//! `prompts.json`, `prompts.md`, `grid.png` (a row per prompt) and `neighbours.png` (each
//! image's nearest training image, same layout).

use super::args::{feature_net, FeatureArgs};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use diffuse_core::sampler::SamplerOptions;
use diffuse_data::datasets::{self, Dataset, Split, Subset};
use diffuse_eval::images::{DatasetImages, ImageBatch, ImageSource, MemoryImages};
use diffuse_eval::prompts::{class_match, summary, PromptCase};
use diffuse_models::pipeline::{GenerateOptions, LoadOptions, Pipeline};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct PromptsArgs {
    /// A text-to-image pipeline folder.
    #[arg(long)]
    model: PathBuf,
    /// The captioned data set the prompts are captions of (its classes are what is matched).
    #[arg(long, default_value = "openmoji")]
    data: String,
    /// A prompt seen in training: a caption of the data set (repeat the flag).
    #[arg(long)]
    prompt: Vec<String>,
    /// A caption held out of training (`[captions] holdout`; repeat the flag): drawn like the
    /// others, and its images are left out of the neighbours searched.
    #[arg(long)]
    holdout: Vec<String>,
    /// Images per prompt.
    #[arg(long, default_value_t = 16)]
    per_prompt: usize,
    #[arg(long)]
    sampler: Option<String>,
    #[arg(long)]
    steps: Option<usize>,
    /// Default: the pipeline's recorded guidance.
    #[arg(long)]
    guidance_scale: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Images per grid row (the first of each prompt's).
    #[arg(long, default_value_t = 8)]
    grid_columns: usize,
    #[arg(long)]
    no_ema: bool,
    #[arg(long)]
    quiet: bool,
    /// A folder for prompts.json, prompts.md, grid.png and neighbours.png.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    features: FeatureArgs,
}

pub fn run_prompts(a: PromptsArgs) -> Result<()> {
    let dev = crate::common::device(&a.features.device)?;
    if a.prompt.is_empty() && a.holdout.is_empty() {
        bail!("give prompts to draw: --prompt CAPTION (seen in training) or --holdout CAPTION");
    }
    if a.per_prompt == 0 {
        bail!("--per-prompt must be at least 1");
    }
    let load = LoadOptions {
        no_ema: a.no_ema,
        ..Default::default()
    };
    let pipe = Pipeline::load(&a.model, &load, &dev)?;
    if pipe.text.is_none() {
        bail!(
            "--model {}: not a text-to-image pipeline",
            a.model.display()
        );
    }
    let (h, w) = pipe
        .image_size()
        .context("the model config has no sample_size")?;
    let opts = datasets::OpenOptions {
        size: Some(h),
        ..Default::default()
    };
    let data: Arc<dyn Dataset> = Arc::from(
        datasets::open_with(&a.data, Split::Train, &opts)
            .with_context(|| format!("--data {}", a.data))?,
    );
    let norm = |s: &str| s.trim().to_lowercase();
    let class_of = |p: &str| -> Result<u32> {
        (0..data.len())
            .find(|&i| data.caption(i).is_some_and(|c| norm(&c.text) == norm(p)))
            .map(|i| data.get(i).map(|s| s.label.unwrap_or(0)))
            .transpose()?
            .with_context(|| format!("{p:?} is no caption of {}: its class is unknown", a.data))
    };
    let mut cases = Vec::new();
    for (list, held_out) in [(&a.prompt, false), (&a.holdout, true)] {
        for p in list {
            cases.push(PromptCase {
                prompt: p.clone(),
                class: class_of(p)?,
                held_out,
            });
        }
    }
    let searched = Subset::without_captions(data.clone(), &a.holdout)?;
    let classes: Vec<u32> = (0..searched.len())
        .map(|i| Ok(searched.get(i)?.label.unwrap_or(0)))
        .collect::<Result<_>>()?;

    // Each prompt's images from the same seed.
    let guidance = a.guidance_scale.unwrap_or_else(|| pipe.default_guidance());
    let sampler = pipe.sampler(a.sampler.as_deref(), a.steps, SamplerOptions::default())?;
    let bar = crate::common::bar(a.quiet);
    let mut images = Vec::with_capacity(cases.len());
    for c in &cases {
        bar.set_message(c.prompt.clone());
        let gen = GenerateOptions {
            num_images: a.per_prompt,
            batch_size: a.batch_size,
            seed: a.seed,
            size: (h / pipe.downscale(), w / pipe.downscale()),
            guidance_scale: guidance,
            prompt_embeds: Some(pipe.prompt_embeds(
                std::slice::from_ref(&c.prompt),
                &[],
                a.per_prompt,
                guidance,
                0,
            )?),
            ..Default::default()
        };
        let x = pipe.generate(&sampler, &gen, 16, &mut |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            ControlFlow::Continue(())
        })?;
        images.push(x.to_device(&Device::Cpu)?);
    }
    bar.finish_and_clear();
    let generated = Tensor::cat(&images, 0)?;
    let net = feature_net(&a.features, &dev)?;
    let bs = a
        .features
        .eval_batch_size
        .unwrap_or_else(|| net.default_batch_size());
    let gen_src = MemoryImages {
        images: ImageBatch::from_unit_tensor(&generated)?,
        labels: None,
        name: "generated".into(),
    };
    let gen_f = net.extract(&gen_src, bs, &dev, &mut |_, _| {})?.features;
    let real_src = DatasetImages::new(Box::new(searched), None, Some(h))?;
    let real_f = net.extract(&real_src, bs, &dev, &mut |_, _| {})?.features;
    let results = class_match(
        &cases,
        &data.class_names(),
        &gen_f,
        a.per_prompt,
        &real_f,
        &classes,
    )?;

    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let json = serde_json::json!({
        "model": a.model.display().to_string(),
        "data": a.data,
        "per_prompt": a.per_prompt,
        "guidance_scale": guidance,
        "steps": sampler.len(),
        "features": net.tag(),
        "searched_images": classes.len(),
        "results": results,
    });
    diffuse_data::fs::write_atomic(
        &a.output.join("prompts.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let mut md = String::from(
        "| prompt | held out | group | group match | chance |\n|---|---|---|---:|---:|\n",
    );
    for r in &results {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} |\n",
            r.prompt,
            if r.held_out { "yes" } else { "no" },
            r.class_name,
            r.match_rate,
            r.chance
        ));
    }
    for (what, held) in [
        ("seen", Some(false)),
        ("held out", Some(true)),
        ("all", None),
    ] {
        let (rate, chance, n) = summary(&results, held);
        if n > 0 {
            let line = format!("{what} ({n} prompts): group match {rate:.3}, chance {chance:.3}");
            println!("{line}");
            md.push_str(&format!("\n{line}"));
        }
    }
    md.push('\n');
    diffuse_data::fs::write_atomic(&a.output.join("prompts.md"), md.as_bytes())?;

    // Grids: each prompt's first images, and their nearest training images.
    let cols = a.grid_columns.clamp(1, a.per_prompt);
    let rows: Vec<Tensor> = (0..cases.len())
        .map(|k| generated.narrow(0, k * a.per_prompt, cols))
        .collect::<candle_core::Result<_>>()?;
    let grid = diffuse_data::image_io::grid(&Tensor::cat(&rows, 0)?, cols, 2, 1.0)?;
    diffuse_data::image_io::save_png(&grid, &a.output.join("grid.png"))?;
    let mut near = Vec::new();
    for r in &results {
        for &(j, _) in &r.nearest[..cols] {
            let b = real_src.batch(j, 1)?;
            near.push(((b.to_tensor(&Device::Cpu)? / 127.5)? - 1.0)?);
        }
    }
    let grid = diffuse_data::image_io::grid(&Tensor::cat(&near, 0)?, cols, 2, 1.0)?;
    diffuse_data::image_io::save_png(&grid, &a.output.join("neighbours.png"))?;
    eprintln!("→ {}", a.output.display());
    Ok(())
}

//! `diffuse eval sweep`: one model (or, `--ema-widths`, a run's post-hoc EMA widths) sampled
//! with several samplers and step counts, each row
//! measured (classifier/Inception FID, KID, precision/recall, class accuracy, IS, images/s),
//! written as `table.jsonl` + `table.md`, per-class sample grids and metric-vs-steps plots (the
//! DDIM paper's table as a picture).

use super::args::{feature_nets, split, FeatureArgs};
use super::ModelSampler;
use anyhow::{bail, Context, Result};
use diffuse_eval::evaluate::{evaluate, EvalOptions, Metric, Reference, Report};
use diffuse_eval::images::{open_images, ImageSource};
use diffuse_eval::sweep::{class_grid, plot_sweep, table_md, SweepLog, SweepRow};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct SweepArgs {
    /// A diffusers pipeline folder (pixel or latent).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated sampler:steps rows (ddpm:1000, ddim:50, dpmpp_2m:20, euler:20, heun:10,
    /// unipc:10, pndm:50, euler_a:20, flow_euler:4, flow_heun:4, …).
    #[arg(
        long,
        default_value = "ddim:10,ddim:20,ddim:50,dpmpp_2m:10,dpmpp_2m:20,euler:20,unipc:10"
    )]
    runs: String,
    /// Real images: a data set name, or a folder.
    #[arg(long)]
    real: String,
    /// Use the first N real images (training split).
    #[arg(long, default_value_t = 10_000)]
    num_real: usize,
    /// Generated images per row (classes in turn).
    #[arg(long, default_value_t = 1000)]
    num_samples: usize,
    #[arg(long, default_value = "fid,cls,is")]
    metrics: String,
    #[command(flatten)]
    features: FeatureArgs,
    #[arg(long, default_value_t = 1.0)]
    guidance_scale: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    #[arg(long)]
    no_ema: bool,
    /// Post-hoc EMA widths σ_rel (comma-separated, e.g. 0.05,0.1,0.2): MODEL is a run folder
    /// trained with `train.posthoc_ema`; each width is reconstructed (as `diffuse ema` does,
    /// into OUTPUT/ema-σ) and every `--runs` row is measured with it.
    #[arg(long, value_delimiter = ',')]
    ema_widths: Vec<f64>,
    /// Output folder (default: MODEL/sweep).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Also measure `num_samples` real images of the test split as a row (the floor that
    /// small-sample bias puts under every metric).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    real_row: bool,
    #[arg(long)]
    quiet: bool,
}

/// One `sampler:steps` row.
fn parse_runs(s: &str) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let spec = crate::eval_cmd::SamplerSpec::parse(Some(part))?;
        // `sampler@t1/t2/…`: chosen timesteps, as many steps as there are.
        if let Some(t) = spec.timesteps {
            out.push((part.to_string(), t.len()));
            continue;
        }
        // `sampler:steps~γ`: the row is named `sampler~γ`, the γ staying with the sampler.
        let head = spec.name.unwrap_or(part);
        let (name, steps) = head.split_once(':').with_context(|| {
            format!("--runs: {part:?} is not sampler:steps, sampler:steps~γ or sampler@t1/t2/…")
        })?;
        let name = format!("{name}{}", &part[head.len()..]);
        let steps: usize = steps
            .parse()
            .ok()
            .filter(|&k| k > 0)
            .with_context(|| format!("--runs: {part:?}: steps must be a positive integer"))?;
        out.push((name.to_string(), steps));
    }
    if out.is_empty() {
        bail!("--runs: no rows given (e.g. ddim:20,dpmpp_2m:10)");
    }
    Ok(out)
}

pub fn run_sweep(a: SweepArgs) -> Result<()> {
    let runs = parse_runs(&a.runs)?;
    let metrics = Metric::parse_list(&a.metrics)?;
    if a.num_samples < 2 {
        bail!("--num-samples must be at least 2");
    }
    let dev = crate::common::device(&a.features.device)?;
    let out = a.output.clone().unwrap_or_else(|| a.model.join("sweep"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // The weights each block of rows samples with: the model's, or one per post-hoc EMA width.
    let mut variants: Vec<(Option<f64>, ModelSampler)> = Vec::new();
    if a.ema_widths.is_empty() {
        variants.push((None, ModelSampler::load(&a.model, a.no_ema, &dev)?));
    }
    for &w in &a.ema_widths {
        let r = diffuse_train::phema::reconstruct(&a.model, w, None)?;
        let dir = out.join(format!("ema-{w}"));
        diffuse_train::phema::write_pipeline(&a.model, &r, &dir)?;
        variants.push((Some(w), ModelSampler::load(&dir, false, &dev)?));
    }
    let ms = &variants[0].1;
    if metrics.contains(&Metric::Cls) && ms.classes.is_none() {
        bail!(
            "--metrics cls: {} is not class-conditional",
            a.model.display()
        );
    }
    // Each sampler name must parse before hours of sampling start.
    for (s, _) in &runs {
        ms.scheduler(Some(s))?;
    }
    let (net, classifier) = feature_nets(&metrics, &a.features, &dev)?;
    let b = crate::common::bar(a.quiet);
    // Real features once, at the generated size.
    let (h, w) = ms.image_size();
    let is_folder = Path::new(&a.real).is_dir()
        && diffuse_data::datasets::known_datasets()
            .iter()
            .all(|k| k.name != a.real);
    let size = (!is_folder && h == w).then_some(h);
    let real_feats = match &net {
        Some(n) => {
            let real = open_images(&a.real, split("train")?, Some(a.num_real), size)?;
            b.set_message("real");
            Some(
                n.extract(
                    real.as_ref(),
                    a.features.eval_batch_size.unwrap_or(n.default_batch_size()),
                    &dev,
                    &mut |d, t| {
                        b.set_length(t as u64);
                        b.set_position(d as u64);
                    },
                )?
                .features,
            )
        }
        None => None,
    };
    let empty = diffuse_eval::metrics::Features::zeros(0, 0);
    let measure = |fake: &dyn ImageSource, labels: Option<&[u32]>| -> Result<Report> {
        Ok(evaluate(
            Reference::Features(real_feats.as_ref().unwrap_or(&empty)),
            fake,
            labels,
            net.as_ref(),
            classifier.as_ref(),
            &EvalOptions {
                metrics: metrics.clone(),
                batch_size: a.features.eval_batch_size,
                ..Default::default()
            },
            &dev,
            &mut |_, _, _| {},
        )?)
    };
    let table = out.join("table.jsonl");
    let mut log = SweepLog::open(&table)?;
    let append = |row: SweepRow, log: &mut SweepLog| -> Result<()> {
        if !a.quiet {
            b.println(row.line());
        }
        Ok(log.push(row)?)
    };
    if a.real_row && !is_folder && !log.has(&SweepRow::real(a.num_samples)) {
        let test = open_images(&a.real, split("test")?, Some(a.num_samples), size)?;
        let labels = test.labels();
        let mut row = SweepRow::real(a.num_samples);
        row.what = Some(test.describe());
        row.record(&measure(test.as_ref(), labels.as_deref())?);
        append(row, &mut log)?;
    }
    for ((sampler, steps), (ema, ms)) in variants
        .iter()
        .flat_map(|v| runs.iter().map(move |r| (r, v)))
    {
        let mut row = SweepRow::sampled(sampler, *steps, a.num_samples, a.guidance_scale, a.seed);
        row.ema_sigma_rel = *ema;
        if log.has(&row) {
            continue; // measured by an earlier (interrupted) sweep
        }
        b.set_message(row.label());
        let g = ms.generate(
            Some(sampler),
            *steps,
            a.num_samples,
            a.guidance_scale,
            None,
            None,
            a.seed,
            a.batch_size,
            &dev,
            &b,
        )?;
        let grid = class_grid(&g.images, g.labels.as_deref(), 8)?;
        let file = sampler.replace(['/', '@', '~'], "_");
        let grid_name = match ema {
            Some(w) => format!("grid-{file}-{steps}-ema{w}.png"),
            None => format!("grid-{file}-{steps}.png"),
        };
        diffuse_data::image_io::save_png(&grid, &out.join(grid_name))?;
        let report = measure(&g.images, g.labels.as_deref())?;
        let nfe = ms.sampler(Some(sampler), *steps)?.len();
        row.nfe = Some(nfe);
        row.gflops = Some(ms.gflops());
        row.sample_s = Some(g.seconds);
        row.images_per_s = Some(a.num_samples as f64 / g.seconds);
        row.threads = Some(rayon_threads());
        row.record(&report);
        append(row, &mut log)?;
    }
    b.finish_and_clear();
    let rows = &log.rows;
    let md = table_md(rows, &a.model, &a.real, a.num_real);
    std::fs::write(out.join("table.md"), &md)?;
    let title = a.model.file_name().map(|f| f.to_string_lossy().to_string());
    let plots = plot_sweep(rows, &out, title.as_deref().unwrap_or("model"), false)?;
    print!("{md}");
    eprintln!(
        "wrote {} and {} plot(s) to {}",
        table.display(),
        plots,
        out.display()
    );
    Ok(())
}

fn rayon_threads() -> usize {
    candle_core::utils::get_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_parse_and_bad_rows_are_named() {
        assert_eq!(
            parse_runs("ddim:10, euler:20").unwrap(),
            vec![("ddim".into(), 10), ("euler".into(), 20)]
        );
        assert!(parse_runs("ddim")
            .unwrap_err()
            .to_string()
            .contains("sampler:steps"));
        assert!(parse_runs("ddim:0")
            .unwrap_err()
            .to_string()
            .contains("positive"));
        assert!(parse_runs("").is_err());
        // Consistency rows: chosen timesteps, γ.
        assert_eq!(
            parse_runs("lcm@999/499,lcm:4~0.3,flow_euler@1000/500~0").unwrap(),
            vec![
                ("lcm@999/499".into(), 2),
                ("lcm~0.3".into(), 4),
                ("flow_euler@1000/500~0".into(), 2)
            ]
        );
        let spec = crate::eval_cmd::SamplerSpec::parse(Some("lcm@999/499~0.5")).unwrap();
        assert_eq!(
            (spec.name, spec.timesteps, spec.gamma),
            (Some("lcm"), Some(vec![999.0, 499.0]), 0.5)
        );
        for bad in ["lcm:2~2", "lcm@999/x", "lcm@"] {
            assert!(parse_runs(bad).is_err(), "{bad}");
        }
    }
}

//! `diffuse eval sweep`: one model sampled with several samplers and step counts, each row
//! measured (classifier/Inception FID, KID, precision/recall, class accuracy, IS, images/s),
//! written as `table.jsonl` + `table.md`, per-class sample grids and metric-vs-steps plots (the
//! DDIM paper's table as a picture). `diffuse eval plot`: a run's loss curve and its `[eval]`
//! metrics against training steps.

use crate::eval_cmd::{feature_net, open_images, split, FeatureArgs, ModelSampler};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use diffuse_eval::classifier::MnistClassifier;
use diffuse_eval::evaluate::{evaluate, EvalOptions, Metric, Reference, Report};
use diffuse_eval::features::FeatureNet;
use diffuse_eval::images::{ImageSource, MemoryImages};
use diffuse_eval::plot::{line_chart, smooth, Chart, Series};
use serde_json::{json, Value};
use std::io::Write;
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

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A training run folder: plots its loss (metrics.jsonl) and any `[eval]` metrics.
    #[arg(long)]
    run: Option<PathBuf>,
    /// A sweep folder (table.jsonl): plots each metric against sampling steps. Repeat it to
    /// draw several models in one plot, each as `LABEL=DIR` (lines named "LABEL sampler"; the
    /// real-data row of the first sweep that has one).
    #[arg(long, value_name = "[LABEL=]DIR")]
    sweep: Vec<String>,
    /// The x axis: sampling steps, or network evaluations (nfe: Heun's 2 per step, …).
    #[arg(long, default_value = "steps", value_parser = ["steps", "nfe"])]
    by: String,
    /// Plot only these samplers (comma-separated names as in the tables, e.g. ddim,flow_euler).
    #[arg(long, value_delimiter = ',')]
    samplers: Vec<String>,
    /// Output folder (default: the run or sweep folder).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Title prefix (default: the folder name).
    #[arg(long)]
    title: Option<String>,
}

/// One `sampler:steps` row.
fn parse_runs(s: &str) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, steps) = part
            .split_once(':')
            .with_context(|| format!("--runs: {part:?} is not sampler:steps"))?;
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

/// Metric columns in table order: (JSON key, header, digits).
const COLUMNS: [(&str, &str, usize); 8] = [
    ("fid", "FID ↓", 2),
    ("kid_mean", "KID ↓", 4),
    ("precision", "precision ↑", 3),
    ("recall", "recall ↑", 3),
    ("class_accuracy", "class acc. ↑", 3),
    ("is_mean", "IS ↑", 2),
    ("gflops", "GFLOPs/call", 3),
    ("images_per_s", "images/s ↑", 1),
];

fn row_key(v: &Value) -> (String, u64, u64, String, u64) {
    (
        v["sampler"].as_str().unwrap_or_default().to_string(),
        v["steps"].as_u64().unwrap_or(0),
        v["num_samples"].as_u64().unwrap_or(0),
        v["guidance_scale"].to_string(),
        v["seed"].as_u64().unwrap_or(0),
    )
}

fn read_rows(path: &Path) -> Result<Vec<Value>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {} is not JSON", path.display(), i + 1))
        })
        .collect()
}

/// The same number (at most `per_class`) of images of each class, one row per class; the first
/// 64 in rows of 8 without labels.
fn class_grid(images: &MemoryImages, labels: Option<&[u32]>, per_class: usize) -> Result<Tensor> {
    let all = images.images.to_tensor(&Device::Cpu)?;
    let (pick, cols): (Vec<u32>, usize) = match labels {
        Some(l) => {
            let k = l.iter().max().map_or(0, |m| *m as usize + 1);
            let of = |c: u32| {
                l.iter()
                    .enumerate()
                    .filter(move |(_, &x)| x == c)
                    .map(|(i, _)| i as u32)
            };
            let m = (0..k as u32)
                .map(|c| of(c).count())
                .min()
                .unwrap_or(0)
                .min(per_class);
            if m == 0 {
                bail!("a class has no samples: generate at least one image per class");
            }
            ((0..k as u32).flat_map(|c| of(c).take(m)).collect(), m)
        }
        None => ((0..images.len().min(64) as u32).collect(), 8),
    };
    let idx = Tensor::new(pick.as_slice(), &Device::Cpu)?;
    let sel = ((all.index_select(&idx, 0)? / 127.5)? - 1.0)?;
    Ok(diffuse_data::image_io::grid(&sel, cols, 2, 1.0)?)
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
    let ms = ModelSampler::load(&a.model, a.no_ema, &dev)?;
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
    let needs_features = metrics
        .iter()
        .any(|m| matches!(m, Metric::Fid | Metric::Kid | Metric::Pr));
    let net = needs_features
        .then(|| feature_net(&a.features, &dev))
        .transpose()?;
    let classifier = if metrics
        .iter()
        .any(|m| matches!(m, Metric::Cls | Metric::Is))
        && !matches!(net, Some(FeatureNet::Mnist(_)))
    {
        Some(MnistClassifier::embedded(&dev)?)
    } else {
        None
    };
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
    let mut rows = read_rows(&table)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&table)
        .with_context(|| format!("cannot write {}", table.display()))?;
    let mut append = |row: Value, rows: &mut Vec<Value>| -> Result<()> {
        writeln!(log, "{row}")?;
        log.flush()?;
        if !a.quiet {
            b.println(row_line(&row));
        }
        rows.push(row);
        Ok(())
    };
    if a.real_row && !is_folder {
        let key = (
            "real".to_string(),
            0,
            a.num_samples as u64,
            "null".into(),
            0,
        );
        if !rows.iter().any(|r| row_key(r) == key) {
            let test = open_images(&a.real, split("test")?, Some(a.num_samples), size)?;
            let labels = test.labels();
            let report = measure(test.as_ref(), labels.as_deref())?;
            let mut row = json!({"sampler": "real", "steps": 0, "num_samples": a.num_samples,
                "guidance_scale": null, "seed": 0, "what": test.describe()});
            merge(&mut row, &report)?;
            append(row, &mut rows)?;
        }
    }
    for (sampler, steps) in &runs {
        let mut row = json!({"sampler": sampler, "steps": steps, "num_samples": a.num_samples,
            "guidance_scale": a.guidance_scale, "seed": a.seed});
        if rows.iter().any(|r| row_key(r) == row_key(&row)) {
            continue; // measured by an earlier (interrupted) sweep
        }
        b.set_message(format!("{sampler}:{steps}"));
        let g = ms.generate(
            Some(sampler),
            *steps,
            a.num_samples,
            a.guidance_scale,
            None,
            a.seed,
            a.batch_size,
            &dev,
            &b,
        )?;
        let grid = class_grid(&g.images, g.labels.as_deref(), 8)?;
        diffuse_data::image_io::save_png(&grid, &out.join(format!("grid-{sampler}-{steps}.png")))?;
        let report = measure(&g.images, g.labels.as_deref())?;
        let nfe = ms
            .scheduler(Some(sampler))
            .and_then(|c| Ok(diffuse_core::sampler::Sampler::new(&c, *steps)?.len()))?;
        row["nfe"] = nfe.into();
        row["gflops"] = ms.gflops().into();
        row["sample_s"] = g.seconds.into();
        row["images_per_s"] = (a.num_samples as f64 / g.seconds).into();
        row["threads"] = rayon_threads().into();
        merge(&mut row, &report)?;
        append(row, &mut rows)?;
    }
    b.finish_and_clear();
    let md = table_md(&rows, &a.model, &a.real, a.num_real);
    std::fs::write(out.join("table.md"), &md)?;
    let title = a.model.file_name().map(|f| f.to_string_lossy().to_string());
    let plots = plot_sweep(&rows, &out, title.as_deref().unwrap_or("model"), false)?;
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

fn merge(row: &mut Value, report: &Report) -> Result<()> {
    for (k, v) in report.values() {
        row[k] = v.into();
    }
    if let Some(n) = &report.feature_net {
        row["feature_net"] = n.clone().into();
    }
    if let Some(n) = report.num_real {
        row["num_real"] = n.into();
    }
    Ok(())
}

fn row_line(r: &Value) -> String {
    let mut s = format!(
        "{} {}",
        r["sampler"].as_str().unwrap_or("?"),
        r["steps"].as_u64().unwrap_or(0)
    );
    for (k, _, d) in COLUMNS {
        if let Some(v) = r[k].as_f64() {
            s += &format!(" · {k} {v:.d$}");
        }
    }
    s
}

/// The rows as a Markdown table (columns that some row has).
fn table_md(rows: &[Value], model: &Path, real: &str, num_real: usize) -> String {
    let cols: Vec<_> = COLUMNS
        .iter()
        .filter(|(k, _, _)| rows.iter().any(|r| r[*k].is_number()))
        .collect();
    let mut s = format!(
        "Model `{}`; reference: the first {num_real} `{real}` training images.\n\n| sampler | steps | NFE | samples |",
        model.display()
    );
    for (_, h, _) in &cols {
        s += &format!(" {h} |");
    }
    s += "\n|---|---:|---:|---:|";
    s += &"---:|".repeat(cols.len());
    s += "\n";
    for r in rows {
        let real = r["sampler"] == "real";
        let name = if real {
            "*real test images*".to_string()
        } else {
            r["sampler"].as_str().unwrap_or("?").to_string()
        };
        let num = |k: &str| r[k].as_u64().map_or("–".into(), |v| v.to_string());
        s += &format!(
            "| {name} | {} | {} | {} |",
            if real { "–".into() } else { num("steps") },
            if real { "–".into() } else { num("nfe") },
            num("num_samples")
        );
        for (k, _, d) in &cols {
            s += &match r[*k].as_f64() {
                Some(v) => format!(" {v:.d$} |", d = *d),
                None => " – |".into(),
            };
        }
        s += "\n";
    }
    s
}

/// One PNG per metric: value against sampling steps (log axis), a line per sampler, the real
/// row as a flat reference line. Returns how many were written.
/// Each metric against sampling steps (or, `by_nfe`, network evaluations), one line per sampler.
fn plot_sweep(rows: &[Value], out: &Path, title: &str, by_nfe: bool) -> Result<usize> {
    // Rows of one sample count only (the most common): the small-sample bias differs between
    // counts, so their metrics are not on one scale.
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for r in rows {
        let n = r["num_samples"].as_u64().unwrap_or(0);
        match counts.iter_mut().find(|c| c.0 == n) {
            Some(c) => c.1 += 1,
            None => counts.push((n, 1)),
        }
    }
    let n = counts.iter().max_by_key(|c| c.1).map_or(0, |c| c.0);
    let rows: Vec<Value> = rows
        .iter()
        .filter(|r| r["num_samples"].as_u64().unwrap_or(0) == n)
        .cloned()
        .collect();
    let rows = rows.as_slice();
    let x_name = if by_nfe {
        "network evaluations"
    } else {
        "sampling steps"
    };
    let mut written = 0;
    for (key, header, _) in COLUMNS.into_iter().filter(|c| c.0 != "gflops") {
        let mut series: Vec<Series> = Vec::new();
        let (mut lo, mut hi) = (f64::INFINITY, 0f64);
        for r in rows.iter().filter(|r| r["sampler"] != "real") {
            let x = if by_nfe && r["nfe"].is_u64() {
                &r["nfe"]
            } else {
                &r["steps"]
            };
            let (Some(v), Some(k)) = (r[key].as_f64(), x.as_u64()) else {
                continue;
            };
            let name = r["sampler"].as_str().unwrap_or("?");
            lo = lo.min(k as f64);
            hi = hi.max(k as f64);
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push((k as f64, v)),
                None => series.push(Series::new(name, vec![(k as f64, v)])),
            }
        }
        if series.is_empty() {
            continue;
        }
        for s in &mut series {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        if let Some(v) = rows
            .iter()
            .find(|r| r["sampler"] == "real")
            .and_then(|r| r[key].as_f64())
        {
            let mut s = Series::new("real test images", vec![(lo, v), (hi, v)]);
            s.faint = true;
            series.push(s);
        }
        let name = key.replace('_', "-");
        line_chart(
            &out.join(format!("{name}-vs-steps.png")),
            &Chart {
                title: format!("{title}: {} against {x_name}", header),
                x_label: x_name.into(),
                y_label: header.trim_end_matches([' ', '↑', '↓']).into(),
                log_x: true,
                markers: true,
                ..Default::default()
            },
            &series,
        )?;
        written += 1;
    }
    Ok(written)
}

pub fn run_plot(a: PlotArgs) -> Result<()> {
    match (&a.run, a.sweep.as_slice()) {
        (Some(run), []) => {
            let out = a.output.clone().unwrap_or_else(|| run.clone());
            let title = a.title.clone().unwrap_or_else(|| {
                run.file_name()
                    .map_or("run".into(), |f| f.to_string_lossy().to_string())
            });
            let n = plot_run(run, &out, &title)?;
            eprintln!("wrote {n} plot(s) to {}", out.display());
        }
        (None, [_, ..]) => {
            let mut rows = Vec::new();
            let mut real = false;
            for item in &a.sweep {
                let (label, dir) = match item.split_once('=') {
                    Some((l, d)) if a.sweep.len() > 1 => (Some(l), PathBuf::from(d)),
                    _ if a.sweep.len() > 1 => {
                        bail!("--sweep {item}: give each of several sweeps as LABEL=DIR")
                    }
                    _ => (None, PathBuf::from(item)),
                };
                let table = dir.join("table.jsonl");
                let these = read_rows(&table)?;
                if these.is_empty() {
                    bail!(
                        "{}: no sweep rows (run `diffuse eval sweep` first)",
                        table.display()
                    );
                }
                for mut r in these {
                    let name = r["sampler"].as_str().unwrap_or("?");
                    if name != "real"
                        && !a.samplers.is_empty()
                        && !a.samplers.iter().any(|s| s == name)
                    {
                        continue;
                    }
                    if r["sampler"] == "real" {
                        if real {
                            continue;
                        }
                        real = true;
                    } else if let Some(l) = label {
                        let name = format!("{l} {}", r["sampler"].as_str().unwrap_or("?"));
                        r["sampler"] = Value::from(name);
                    }
                    rows.push(r);
                }
            }
            let out = match (&a.output, a.sweep.len()) {
                (Some(o), _) => o.clone(),
                (None, 1) => PathBuf::from(&a.sweep[0]),
                (None, _) => bail!("--output: where to write the plots of several sweeps"),
            };
            let title = a.title.clone().unwrap_or_else(|| "model".into());
            let n = plot_sweep(&rows, &out, &title, a.by == "nfe")?;
            eprintln!("wrote {n} plot(s) to {}", out.display());
        }
        _ => {
            bail!("give --run DIR (a training run) or --sweep DIR (a `diffuse eval sweep` folder)")
        }
    }
    Ok(())
}

/// `loss.png` (per step, faint, and smoothed) and `eval-<metric>.png` for each `eval/*` value
/// in the run's metrics log.
fn plot_run(run: &Path, out: &Path, title: &str) -> Result<usize> {
    let log = run.join("metrics.jsonl");
    let rows = read_rows(&log)?;
    if rows.is_empty() {
        bail!(
            "{}: no metrics (is this a `diffuse train` output folder?)",
            log.display()
        );
    }
    let loss: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r["skipped"] != true)
        .filter_map(|r| Some((r["step"].as_f64()?, r["loss"].as_f64()?)))
        .filter(|p| p.1.is_finite())
        .collect();
    // The y range leaves out the first 5% of steps, where the loss falls from far above.
    let tail = &loss[loss.len() / 20..];
    let hi = tail.iter().map(|p| p.1).fold(0f64, f64::max) * 1.1;
    let lo = tail.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) * 0.9;
    let mut raw = Series::new("", loss.clone());
    raw.faint = true;
    raw.color = Some(1);
    let mut smoothed = Series::new("smoothed (EMA 0.03)", smooth(&loss, 0.03));
    smoothed.color = Some(1);
    line_chart(
        &out.join("loss.png"),
        &Chart {
            title: format!("{title}: training loss"),
            x_label: "step".into(),
            y_label: "loss".into(),
            y_range: (hi > lo).then_some((lo.max(0.0), hi)),
            ..Default::default()
        },
        &[raw, smoothed],
    )?;
    let mut written = 1;
    let mut keys: Vec<String> = Vec::new();
    for r in &rows {
        if let Some(o) = r.as_object() {
            for k in o.keys().filter(|k| k.starts_with("eval/")) {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    for k in keys {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[k.as_str()].as_f64()?)))
            .collect();
        let name = &k["eval/".len()..];
        line_chart(
            &out.join(format!("eval-{}.png", name.replace('_', "-"))),
            &Chart {
                title: format!("{title}: {name} during training"),
                x_label: "step".into(),
                y_label: name.into(),
                markers: true,
                ..Default::default()
            },
            &[Series::new(name, pts)],
        )?;
        written += 1;
    }
    Ok(written)
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
    }

    #[test]
    fn table_has_a_column_per_metric_present() {
        let rows = vec![
            json!({"sampler": "real", "steps": 0, "num_samples": 100, "fid": 1.5}),
            json!({"sampler": "ddim", "steps": 10, "nfe": 10, "num_samples": 100, "fid": 12.25,
                   "class_accuracy": 0.9}),
        ];
        let md = table_md(&rows, Path::new("m"), "mnist", 1000);
        assert!(md.contains("| FID ↓ | class acc. ↑ |"), "{md}");
        assert!(
            md.contains("| ddim | 10 | 10 | 100 | 12.25 | 0.900 |"),
            "{md}"
        );
        assert!(
            md.contains("| *real test images* | – | – | 100 | 1.50 | – |"),
            "{md}"
        );
        assert!(!md.contains("KID"));
    }
}

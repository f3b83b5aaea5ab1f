//! `diffuse eval plot`: a run's loss curve and its `[eval]` metrics against training steps, or
//! sweeps' metrics against sampling steps.

use super::report::{plot_run, plot_sweep, read_rows};
use anyhow::{bail, Result};
use serde_json::Value;
use std::path::PathBuf;

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

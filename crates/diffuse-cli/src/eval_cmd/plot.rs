//! `diffuse eval plot`: a run's loss curve and its `[eval]` metrics against training steps, or
//! sweeps' metrics against sampling steps.

use anyhow::{bail, Result};
use diffuse_eval::plot::plot_run;
use diffuse_eval::sweep::{plot_sweep, read_rows};
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
    #[arg(long, value_enum, default_value_t = Axis::Steps)]
    by: Axis,
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

/// The x axis of sweep plots.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Axis {
    Steps,
    Nfe,
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
                    if !r.is_real() && !a.samplers.is_empty() && !a.samplers.contains(&r.sampler) {
                        continue;
                    }
                    if r.is_real() {
                        if real {
                            continue;
                        }
                        real = true;
                    } else if let Some(l) = label {
                        r.sampler = format!("{l} {}", r.sampler);
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
            let n = plot_sweep(&rows, &out, &title, a.by == Axis::Nfe)?;
            eprintln!("wrote {n} plot(s) to {}", out.display());
        }
        _ => {
            bail!("give --run DIR (a training run) or --sweep DIR (a `diffuse eval sweep` folder)")
        }
    }
    Ok(())
}

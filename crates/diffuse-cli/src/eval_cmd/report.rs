//! Sweep tables (rows of `table.jsonl`, their Markdown table), class grids and the plots of
//! sweeps and training runs.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use diffuse_eval::evaluate::Report;
use diffuse_eval::images::{ImageSource, MemoryImages};
use diffuse_eval::plot::{line_chart, smooth, Chart, Series};
use serde_json::Value;
use std::path::Path;

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

pub(super) fn row_key(v: &Value) -> (String, u64, u64, String, u64) {
    (
        v["sampler"].as_str().unwrap_or_default().to_string(),
        v["steps"].as_u64().unwrap_or(0),
        v["num_samples"].as_u64().unwrap_or(0),
        v["guidance_scale"].to_string(),
        v["seed"].as_u64().unwrap_or(0),
    )
}

pub(super) fn read_rows(path: &Path) -> Result<Vec<Value>> {
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
pub(super) fn class_grid(
    images: &MemoryImages,
    labels: Option<&[u32]>,
    per_class: usize,
) -> Result<Tensor> {
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

pub(super) fn merge(row: &mut Value, report: &Report) -> Result<()> {
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

pub(super) fn row_line(r: &Value) -> String {
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
pub(super) fn table_md(rows: &[Value], model: &Path, real: &str, num_real: usize) -> String {
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
pub(super) fn plot_sweep(rows: &[Value], out: &Path, title: &str, by_nfe: bool) -> Result<usize> {
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

/// `loss.png` (per step, faint, and smoothed) and `eval-<metric>.png` for each `eval/*` value
/// in the run's metrics log.
pub(super) fn plot_run(run: &Path, out: &Path, title: &str) -> Result<usize> {
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
    use serde_json::json;

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

//! Sampler sweeps (`diffuse eval sweep`): one model measured per (sampler, steps), each a
//! [`SweepRow`] of `table.jsonl`, shown as a Markdown table, per-class sample grids and
//! metric-vs-steps plots (the DDIM paper's Table 1 as a picture).

use crate::evaluate::Report;
use crate::images::{ImageSource, MemoryImages};
use crate::plot::{line_chart, Chart, Series};
use crate::{io_err, Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `sampler` of the row that measures real test images (the floor under every metric).
pub const REAL: &str = "real";

/// One measured row: the JSON object on one line of `table.jsonl` (absent numbers are left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// A scheduler class or alias (`ddim`, `dpmpp_2m`, …), or [`REAL`].
    pub sampler: String,
    #[serde(default)]
    pub steps: usize,
    #[serde(default)]
    pub num_samples: usize,
    /// Classifier-free guidance scale (`null` for the real row).
    #[serde(default)]
    pub guidance_scale: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Post-hoc EMA: the σ_rel the weights were reconstructed at (`eval sweep --ema-widths`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_sigma_rel: Option<f64>,
    /// What the real row measured (e.g. "mnist test (first 1000)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// Network evaluations of the sampler at `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfe: Option<usize>,
    /// Forward GFLOPs of the network per image and call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// Seconds of sampling (decoding included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid_std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_real: Option<usize>,
    /// Columns other tools add (e.g. tools/eval/deploy_table.sh's `model`), kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl SweepRow {
    /// A row of `num_samples` images from `sampler` at `steps`.
    pub fn sampled(
        sampler: &str,
        steps: usize,
        num_samples: usize,
        guidance_scale: f64,
        seed: u64,
    ) -> Self {
        SweepRow {
            sampler: sampler.into(),
            steps,
            num_samples,
            guidance_scale: Some(guidance_scale),
            seed,
            ..Default::default()
        }
    }

    /// The real-data row of `num_samples` test images.
    pub fn real(num_samples: usize) -> Self {
        SweepRow {
            sampler: REAL.into(),
            num_samples,
            ..Default::default()
        }
    }

    pub fn is_real(&self) -> bool {
        self.sampler == REAL
    }

    /// The sampler, with the post-hoc EMA width where the row has one
    /// (`flow_euler · EMA σ_rel 0.05`): a table row's name and a plot's line.
    pub fn label(&self) -> String {
        match self.ema_sigma_rel {
            Some(w) => format!("{} · EMA σ_rel {w}", self.sampler),
            None => self.sampler.clone(),
        }
    }

    /// Whether `other` measures the same thing (sampler, steps, samples, guidance, seed): a
    /// rerun skips rows already in the table.
    pub fn same_run(&self, other: &SweepRow) -> bool {
        self.sampler == other.sampler
            && self.steps == other.steps
            && self.num_samples == other.num_samples
            && self.guidance_scale == other.guidance_scale
            && self.seed == other.seed
            && self.ema_sigma_rel == other.ema_sigma_rel
    }

    /// Takes the numbers of an evaluation report.
    pub fn record(&mut self, report: &Report) {
        let r = report;
        for (mine, theirs) in [
            (&mut self.fid, r.fid),
            (&mut self.kid_mean, r.kid_mean),
            (&mut self.kid_std, r.kid_std),
            (&mut self.precision, r.precision),
            (&mut self.recall, r.recall),
            (&mut self.class_accuracy, r.class_accuracy),
            (&mut self.is_mean, r.is_mean),
            (&mut self.is_std, r.is_std),
        ] {
            *mine = theirs.or(*mine);
        }
        self.feature_net = r.feature_net.clone().or(self.feature_net.take());
        self.num_real = r.num_real.or(self.num_real);
    }

    /// One progress line: `ddim 10 · fid 12.25 · class_accuracy 0.900`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.label(), self.steps);
        for c in &COLUMNS {
            if let Some(v) = (c.get)(self) {
                s += &format!(" · {} {v:.d$}", c.key, d = c.digits);
            }
        }
        s
    }
}

/// A number column of the table.
pub struct Column {
    /// The JSON key (and plot file name, `_` as `-`).
    pub key: &'static str,
    pub header: &'static str,
    /// Digits after the point.
    pub digits: usize,
    pub get: fn(&SweepRow) -> Option<f64>,
}

/// Metric columns in table order.
pub const COLUMNS: [Column; 8] = [
    Column {
        key: "fid",
        header: "FID ↓",
        digits: 2,
        get: |r| r.fid,
    },
    Column {
        key: "kid_mean",
        header: "KID ↓",
        digits: 4,
        get: |r| r.kid_mean,
    },
    Column {
        key: "precision",
        header: "precision ↑",
        digits: 3,
        get: |r| r.precision,
    },
    Column {
        key: "recall",
        header: "recall ↑",
        digits: 3,
        get: |r| r.recall,
    },
    Column {
        key: "class_accuracy",
        header: "class acc. ↑",
        digits: 3,
        get: |r| r.class_accuracy,
    },
    Column {
        key: "is_mean",
        header: "IS ↑",
        digits: 2,
        get: |r| r.is_mean,
    },
    Column {
        key: "gflops",
        header: "GFLOPs/call",
        digits: 3,
        get: |r| r.gflops,
    },
    Column {
        key: "images_per_s",
        header: "images/s ↑",
        digits: 1,
        get: |r| r.images_per_s,
    },
];

/// The rows of a `table.jsonl` (none when the file does not exist).
pub fn read_rows(path: &Path) -> Result<Vec<SweepRow>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::File(format!(
                    "{}: line {} is not a sweep row ({e}); is it a `diffuse eval sweep` table?",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// A `table.jsonl` open for appending: the rows so far, and each new row written (and
/// flushed) as it is measured, so an interrupted sweep resumes.
pub struct SweepLog {
    path: PathBuf,
    file: std::fs::File,
    pub rows: Vec<SweepRow>,
}

impl SweepLog {
    pub fn open(path: &Path) -> Result<Self> {
        let rows = read_rows(path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(SweepLog {
            path: path.to_path_buf(),
            file,
            rows,
        })
    }

    /// Whether a row like `row` was measured already.
    pub fn has(&self, row: &SweepRow) -> bool {
        self.rows.iter().any(|r| r.same_run(row))
    }

    pub fn push(&mut self, row: SweepRow) -> Result<()> {
        let line = serde_json::to_string(&row)
            .map_err(|e| Error::Input(format!("sweep row {}: {e}", row.sampler)))?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(io_err(&self.path))?;
        self.rows.push(row);
        Ok(())
    }
}

/// The same number (at most `per_class`) of images of each class, one row per class; the first
/// 64 in rows of 8 without labels. Values in [−1, 1], for `image_io::save_png`.
pub fn class_grid(
    images: &MemoryImages,
    labels: Option<&[u32]>,
    per_class: usize,
) -> Result<Tensor> {
    let all = images.images.to_tensor(&Device::Cpu)?; // [n, c, h, w] in 0..255
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
                return Err(Error::Input(
                    "a class has no samples: generate at least one image per class".into(),
                ));
            }
            ((0..k as u32).flat_map(|c| of(c).take(m)).collect(), m)
        }
        None => ((0..images.len().min(64) as u32).collect(), 8),
    };
    let idx = Tensor::new(pick.as_slice(), &Device::Cpu)?;
    let sel = ((all.index_select(&idx, 0)? / 127.5)? - 1.0)?;
    Ok(diffuse_data::image_io::grid(&sel, cols, 2, 1.0)?)
}

/// The rows as a Markdown table (columns that some row has).
pub fn table_md(rows: &[SweepRow], model: &Path, real: &str, num_real: usize) -> String {
    let cols: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| rows.iter().any(|r| (c.get)(r).is_some()))
        .collect();
    let mut s = format!(
        "Model `{}`; reference: the first {num_real} `{real}` training images.\n\n| sampler | steps | NFE | samples |",
        model.display()
    );
    for c in &cols {
        s += &format!(" {} |", c.header);
    }
    s += "\n|---|---:|---:|---:|";
    s += &"---:|".repeat(cols.len());
    s += "\n";
    for r in rows {
        let (name, steps, nfe) = if r.is_real() {
            ("*real test images*".to_string(), "–".into(), "–".into())
        } else {
            let nfe = r.nfe.map_or("–".into(), |v| v.to_string());
            (r.label(), r.steps.to_string(), nfe)
        };
        s += &format!("| {name} | {steps} | {nfe} | {} |", r.num_samples);
        for c in &cols {
            s += &match (c.get)(r) {
                Some(v) => format!(" {v:.d$} |", d = c.digits),
                None => " – |".into(),
            };
        }
        s += "\n";
    }
    s
}

/// One PNG per metric (`<metric>-vs-steps.png`): value against sampling steps (or, `by_nfe`,
/// network evaluations; log axis), a line per sampler, the real row as a flat reference line.
/// Returns how many were written.
pub fn plot_sweep(rows: &[SweepRow], out: &Path, title: &str, by_nfe: bool) -> Result<usize> {
    // Rows of one sample count only (the most common): the small-sample bias differs between
    // counts, so their metrics are not on one scale.
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for r in rows {
        match counts.iter_mut().find(|c| c.0 == r.num_samples) {
            Some(c) => c.1 += 1,
            None => counts.push((r.num_samples, 1)),
        }
    }
    let n = counts.iter().max_by_key(|c| c.1).map_or(0, |c| c.0);
    let rows: Vec<&SweepRow> = rows.iter().filter(|r| r.num_samples == n).collect();
    let x_name = if by_nfe {
        "network evaluations"
    } else {
        "sampling steps"
    };
    let mut written = 0;
    for col in COLUMNS.iter().filter(|c| c.key != "gflops") {
        let mut series: Vec<Series> = Vec::new();
        let (mut lo, mut hi) = (f64::INFINITY, 0f64);
        for r in rows.iter().filter(|r| !r.is_real()) {
            let k = match (by_nfe, r.nfe) {
                (true, Some(nfe)) => nfe,
                _ => r.steps,
            };
            let Some(v) = (col.get)(r) else {
                continue;
            };
            lo = lo.min(k as f64);
            hi = hi.max(k as f64);
            let name = r.label();
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push((k as f64, v)),
                None => series.push(Series::new(name.as_str(), vec![(k as f64, v)])),
            }
        }
        if series.is_empty() {
            continue;
        }
        for s in &mut series {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        if let Some(v) = rows.iter().find(|r| r.is_real()).and_then(|r| (col.get)(r)) {
            let mut s = Series::new("real test images", vec![(lo, v), (hi, v)]);
            s.faint = true;
            series.push(s);
        }
        let name = col.key.replace('_', "-");
        line_chart(
            &out.join(format!("{name}-vs-steps.png")),
            &Chart {
                title: format!("{title}: {} against {x_name}", col.header),
                x_label: x_name.into(),
                y_label: col.header.trim_end_matches([' ', '↑', '↓']).into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> SweepRow {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn table_has_a_column_per_metric_present() {
        let rows = vec![
            row(r#"{"sampler": "real", "steps": 0, "num_samples": 100, "fid": 1.5}"#),
            row(
                r#"{"sampler": "ddim", "steps": 10, "nfe": 10, "num_samples": 100, "fid": 12.25,
                   "class_accuracy": 0.9}"#,
            ),
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

    #[test]
    fn rows_keep_their_json_columns_in_order() {
        let mut r = SweepRow::sampled("ddim", 10, 100, 2.0, 7);
        r.nfe = Some(10);
        r.record(&Report {
            fid: Some(3.5),
            feature_net: Some("mnist".into()),
            num_real: Some(200),
            ..Default::default()
        });
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"sampler":"ddim","steps":10,"num_samples":100,"guidance_scale":2.0,"seed":7,"nfe":10,"fid":3.5,"feature_net":"mnist","num_real":200}"#
        );
        assert_eq!(row(&line), r);
        let real = serde_json::to_string(&SweepRow::real(20)).unwrap();
        assert_eq!(
            real,
            r#"{"sampler":"real","steps":0,"num_samples":20,"guidance_scale":null,"seed":0}"#
        );
        assert!(row(&real).same_run(&SweepRow::real(20)));
        assert!(!r.same_run(&SweepRow::sampled("ddim", 10, 100, 1.0, 7)));
    }

    #[test]
    fn the_deploy_table_in_docs_reads_and_round_trips() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy-table.jsonl");
        let rows = read_rows(&path).unwrap();
        assert!(rows.len() >= 4, "{}", rows.len());
        assert_eq!(rows[1].extra["model"], "int8");
        assert_eq!(rows[1].sampler, "ddim");
        assert!(rows[1].fid.is_some_and(|f| f > 0.0));
        for r in &rows {
            assert_eq!(&row(&serde_json::to_string(r).unwrap()), r);
        }
    }

    #[test]
    fn a_log_appends_and_skips_measured_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.jsonl");
        let mut log = SweepLog::open(&path).unwrap();
        log.push(SweepRow::real(20)).unwrap();
        log.push(SweepRow::sampled("euler", 2, 20, 1.0, 0)).unwrap();
        drop(log);
        let log = SweepLog::open(&path).unwrap();
        assert_eq!(log.rows.len(), 2);
        assert!(log.has(&SweepRow::sampled("euler", 2, 20, 1.0, 0)));
        assert!(!log.has(&SweepRow::sampled("euler", 4, 20, 1.0, 0)));
        std::fs::write(&path, "{\"steps\": 3}\n").unwrap();
        let e = read_rows(&path).unwrap_err().to_string();
        assert!(e.contains("line 1 is not a sweep row"), "{e}");
    }
}

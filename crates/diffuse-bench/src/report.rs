//! What `diffuse bench` measured: the JSON report (`--json`, read by `bench/report.py`) and
//! its markdown table.

use crate::machine::MachinePeak;
use diffuse_models::flops::FlopCount;
use serde::Serialize;
use serde_json::Value;

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// `forward_b8`, `train_b32`, `ddim50_16`.
    pub name: String,
    pub kind: String,
    /// Images per call (forward/train) or images sampled (sample).
    pub batch: usize,
    pub steps: Option<usize>,
    pub runs: usize,
    pub warmup: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub times_s: Vec<f64>,
    pub images_per_s: f64,
    pub flops: f64,
    pub gflops_per_s: f64,
    /// Of the CPU's peak (None on a GPU).
    pub peak_fraction: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// The loss of the first training step (from the initial weights), to compare sides.
    pub first_loss: Option<f64>,
}

/// Everything `diffuse bench` measured, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub side: String,
    pub versions: Value,
    pub device: String,
    /// "f32", or "bf16" (see [`crate::BenchOptions::dtype`]).
    pub dtype: String,
    pub threads: usize,
    pub date_unix: u64,
    pub model: Value,
    pub flops_forward_per_image: FlopCount,
    pub machine_peak: MachinePeak,
    /// How peak RSS was taken.
    pub peak_rss_method: String,
    pub measurements: Vec<Measurement>,
}

fn fmt_bytes(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.0} MB", b as f64 / 1e6))
}

impl BenchReport {
    /// A markdown table of the measurements, with the model and machine above it.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let m = &self.model;
        s.push_str(&format!(
            "model {} ({} parameters, {}×{}×{}), {} threads, {}, {}\n",
            m["name"].as_str().unwrap_or("?"),
            m["params"],
            m["in_channels"],
            m["sample_size"][0],
            m["sample_size"][1],
            self.threads,
            self.device,
            self.dtype
        ));
        let f = &self.flops_forward_per_image;
        s.push_str(&format!(
            "forward FLOPs per image: {:.3} GFLOP (conv {:.3}, linear {:.3}, attention {:.3}); train step = 3× forward\n",
            f.total() as f64 / 1e9,
            f.conv as f64 / 1e9,
            f.linear as f64 / 1e9,
            f.attention as f64 / 1e9
        ));
        let e = &f.conv_executed;
        s.push_str(&format!(
            "conv FLOPs executed by the CPU kernels (Winograd-reduced) per image at batch {}: \
             forward {:.3} GFLOP of {:.3} nominal ({:.2}×), training step (forward + dX + dW) \
             {:.3} of {:.3} ({:.2}×)\n",
            f.executed_batch.max(1),
            e.forward as f64 / 1e9,
            f.conv as f64 / 1e9,
            f.conv as f64 / e.forward.max(1) as f64,
            e.total() as f64 / 1e9,
            3.0 * f.conv as f64 / 1e9,
            3.0 * f.conv as f64 / e.total().max(1) as f64,
        ));
        s.push_str(&format!(
            "peak: {} ({})\n\n",
            self.machine_peak.how, self.machine_peak.cpu_model
        ));
        s.push_str("| case | median s | min s | max s | runs | images/s | GFLOP/s | % of peak | peak RSS |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for x in &self.measurements {
            s.push_str(&format!(
                "| {} | {:.4} | {:.4} | {:.4} | {} | {:.2} | {:.1} | {} | {} |\n",
                x.name,
                x.median_s,
                x.min_s,
                x.max_s,
                x.runs,
                x.images_per_s,
                x.gflops_per_s,
                x.peak_fraction
                    .map_or("-".into(), |f| format!("{:.1}", 100.0 * f)),
                fmt_bytes(x.peak_rss_bytes)
            ));
        }
        s
    }
}

//! Prometheus metrics in the text exposition format (version 0.0.4), kept with atomics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, buckets: &[f64]) {
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<Histogram>,
    batches: Mutex<Histogram>,
    queue_depth: AtomicI64,
    images: AtomicU64,
    evaluations: AtomicU64,
    /// Denoiser evaluations (image rows × model calls) per second of the last batch, ×1000.
    evals_per_sec_milli: AtomicU64,
    cancelled: AtomicU64,
}

impl Metrics {
    pub fn request(&self, status: u16, latency: Duration) {
        *self
            .requests
            .lock()
            .expect("lock")
            .entry(status)
            .or_default() += 1;
        self.latency
            .lock()
            .expect("lock")
            .observe(&LATENCY_BUCKETS, latency.as_secs_f64());
    }

    pub fn queue_depth_add(&self, d: i64) {
        self.queue_depth.fetch_add(d, Ordering::SeqCst);
    }

    pub fn observe_batch(&self, images: usize) {
        self.batches
            .lock()
            .expect("lock")
            .observe(&BATCH_BUCKETS, images as f64);
    }

    pub fn observe_compute(&self, images: usize, calls: usize, took: Duration) {
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        let evals = (images * calls) as u64;
        self.evaluations.fetch_add(evals, Ordering::Relaxed);
        let rate = evals as f64 / took.as_secs_f64().max(1e-9);
        self.evals_per_sec_milli
            .store((rate * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn images_generated(&self) -> u64 {
        self.images.load(Ordering::Relaxed)
    }

    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str("# HELP diffuse_requests_total HTTP requests by status code.\n");
        o.push_str("# TYPE diffuse_requests_total counter\n");
        for (s, c) in self.requests.lock().expect("lock").iter() {
            let _ = writeln!(o, "diffuse_requests_total{{status=\"{s}\"}} {c}");
        }
        o.push_str("# HELP diffuse_request_duration_seconds Generation request latency.\n");
        o.push_str("# TYPE diffuse_request_duration_seconds histogram\n");
        self.latency.lock().expect("lock").render(
            &mut o,
            "diffuse_request_duration_seconds",
            &LATENCY_BUCKETS,
        );
        o.push_str("# HELP diffuse_queue_depth Requests waiting for a batch.\n");
        o.push_str("# TYPE diffuse_queue_depth gauge\n");
        let _ = writeln!(
            o,
            "diffuse_queue_depth {}",
            self.queue_depth.load(Ordering::SeqCst).max(0)
        );
        o.push_str("# HELP diffuse_batch_images Images denoised together per batch.\n");
        o.push_str("# TYPE diffuse_batch_images histogram\n");
        self.batches
            .lock()
            .expect("lock")
            .render(&mut o, "diffuse_batch_images", &BATCH_BUCKETS);
        o.push_str("# HELP diffuse_images_generated_total Images generated.\n");
        o.push_str("# TYPE diffuse_images_generated_total counter\n");
        let _ = writeln!(
            o,
            "diffuse_images_generated_total {}",
            self.images.load(Ordering::Relaxed)
        );
        o.push_str(
            "# HELP diffuse_denoiser_evaluations_total Image rows passed through the model.\n",
        );
        o.push_str("# TYPE diffuse_denoiser_evaluations_total counter\n");
        let _ = writeln!(
            o,
            "diffuse_denoiser_evaluations_total {}",
            self.evaluations.load(Ordering::Relaxed)
        );
        o.push_str(
            "# HELP diffuse_denoiser_evaluations_per_second Throughput of the last batch.\n",
        );
        o.push_str("# TYPE diffuse_denoiser_evaluations_per_second gauge\n");
        let _ = writeln!(
            o,
            "diffuse_denoiser_evaluations_per_second {}",
            self.evals_per_sec_milli.load(Ordering::Relaxed) as f64 / 1000.0
        );
        o.push_str("# HELP diffuse_cancelled_total Requests cancelled by their client.\n");
        o.push_str("# TYPE diffuse_cancelled_total counter\n");
        let _ = writeln!(
            o,
            "diffuse_cancelled_total {}",
            self.cancelled.load(Ordering::Relaxed)
        );
        o
    }
}

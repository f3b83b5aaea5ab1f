//! Wall-clock time per op kind, for latency work (`DIFFUSE_PROFILE=1`): each `ops` entry point
//! adds its time and call count under a label; `diffuse bench` prints the table per forward
//! case, with the part of the forward no op accounts for (candle's element-wise ops, copies,
//! reshapes). Off, it costs one branch per op. CPU ops are synchronous, so their times add up.

use std::sync::Mutex;
use std::time::Instant;

/// Whether `DIFFUSE_PROFILE` is set (to anything but `0`).
pub fn enabled() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("DIFFUSE_PROFILE").is_ok_and(|v| v != "0"))
}

static TABLE: Mutex<Vec<(&'static str, u64, f64)>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether an op on this thread is being timed: an op that calls another `ops` entry
    /// (the bf16 paths call their f32 selves) is counted once, under the outer label.
    static TIMING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Times one op until dropped.
pub struct Scope {
    label: &'static str,
    start: Instant,
}

impl Drop for Scope {
    fn drop(&mut self) {
        TIMING.with(|t| t.set(false));
        let s = self.start.elapsed().as_secs_f64();
        let mut t = TABLE.lock().expect("profile lock");
        match t.iter_mut().find(|e| e.0 == self.label) {
            Some(e) => {
                e.1 += 1;
                e.2 += s;
            }
            None => t.push((self.label, 1, s)),
        }
    }
}

/// A timer for `label` when profiling is on and no outer op on this thread is being timed.
#[inline]
pub fn scope(label: &'static str) -> Option<Scope> {
    if !enabled() || TIMING.with(|t| t.replace(true)) {
        return None;
    }
    Some(Scope {
        label,
        start: Instant::now(),
    })
}

/// Clears the table.
pub fn reset() {
    TABLE.lock().expect("profile lock").clear();
}

/// The table as markdown, per call of the profiled code (`calls` of it took `total_s` in all):
/// each label's time and share, then the rest.
pub fn report(calls: usize, total_s: f64) -> String {
    let mut t = TABLE.lock().expect("profile lock").clone();
    t.sort_by(|a, b| b.2.total_cmp(&a.2));
    let n = calls.max(1) as f64;
    let mut s = String::from("| op | calls | ms | share |\n|---|---:|---:|---:|\n");
    let mut covered = 0.0;
    for (label, c, secs) in &t {
        covered += secs;
        s.push_str(&format!(
            "| {label} | {} | {:.2} | {:.1} % |\n",
            *c as f64 / n,
            secs / n * 1e3,
            100.0 * secs / total_s.max(1e-12)
        ));
    }
    let rest = (total_s - covered).max(0.0);
    s.push_str(&format!(
        "| everything else (element-wise, copies, reshapes) | | {:.2} | {:.1} % |\n| **forward** | | **{:.2}** | |\n",
        rest / n * 1e3,
        100.0 * rest / total_s.max(1e-12),
        total_s / n * 1e3
    ));
    s
}

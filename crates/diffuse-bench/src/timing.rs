//! Timing a case: medians, and a timed loop after untimed warm-up runs with its peak RSS.

use crate::machine::{peak_rss_bytes, reset_peak_rss};
use crate::Result;
use candle_core::Device;
use std::time::Instant;

pub(crate) fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// The seconds of each timed run, and the peak RSS over warm-up and runs.
pub(crate) type Timed = (Vec<f64>, Option<u64>);

/// Times `f` after `warmup` untimed calls; the peak RSS covers warm-up and runs.
pub(crate) fn measure(
    runs: usize,
    warmup: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Timed> {
    reset_peak_rss();
    for _ in 0..warmup {
        f()?;
        device.synchronize()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok((times, peak_rss_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[1.0, 2.0, 10.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), 3.0);
    }
}

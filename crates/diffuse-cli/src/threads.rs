//! The global `--threads N` / `DIFFUSE_THREADS`: how many CPU threads candle's kernels use.
//!
//! candle reads `RAYON_NUM_THREADS` (its gemm and rayon loops, `candle_core::utils::
//! get_num_threads`) and `CANDLE_NUM_THREADS` (its barrier pool), each once; so both are set,
//! and rayon's global pool built, before any tensor work. Default: all cores.

use anyhow::{bail, Result};

/// Spins of candle's barrier-pool workers before they park (candle's default: 25 000). Its
/// workers spin after every element-wise op while rayon's threads run our kernels, so on few
/// cores they take the cores those kernels need: the batch-1 forward of the bench U-Net took
/// 27–29 ms with 0 or 1000 spins against 34–45 ms with 25 000, in 3 of 4 alternating runs
/// each; batch 8 and the training step did not move (docs/performance.md).
const BARRIER_POOL_SPINS: &str = "1000";

/// Pins the process to `n` threads (None: leave candle's default, all cores), and shortens
/// candle's barrier-pool spinning unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set.
pub fn configure(n: Option<usize>) -> Result<()> {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Single-threaded here, before candle's pool exists (it reads this once).
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", BARRIER_POOL_SPINS);
    }
    let Some(n) = n else { return Ok(()) };
    if n == 0 {
        bail!("--threads: must be at least 1");
    }
    // Single-threaded here: main calls this before anything spawns a thread.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    // Fails only if a pool exists already, which then has rayon's default size.
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("--threads: {e}"))?;
    Ok(())
}

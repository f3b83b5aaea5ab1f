//! The global `--threads N` / `DIFFUSE_THREADS`: how many CPU threads candle's kernels use.
//!
//! candle reads `RAYON_NUM_THREADS` (its gemm and rayon loops, `candle_core::utils::
//! get_num_threads`) and `CANDLE_NUM_THREADS` (its barrier pool), each once; so both are set,
//! and rayon's global pool built, before any tensor work. Default: all cores.

use anyhow::{bail, Result};

/// Pins the process to `n` threads (None: leave candle's default, all cores).
pub fn configure(n: Option<usize>) -> Result<()> {
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

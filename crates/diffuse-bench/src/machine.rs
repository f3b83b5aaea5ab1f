//! Facts of the machine and the process: the CPU's peak f32 rate (from lscpu and
//! `/proc/cpuinfo`) and peak RSS (VmHWM of `/proc/self/status`).

use serde::Serialize;

/// The machine's peak f32 rate and how it was computed.
#[derive(Debug, Clone, Serialize)]
pub struct MachinePeak {
    pub cpu_model: String,
    /// Cores the benchmark runs on (its thread count, at most the online CPUs).
    pub cores: usize,
    /// FMA pipes per core (2 on AMD Zen and Intel server cores).
    pub fma_units: usize,
    /// f32 lanes of the widest SIMD the CPU reports (8 for AVX2, 16 for AVX-512).
    pub lanes: usize,
    pub simd: String,
    pub clock_ghz: f64,
    pub clock_source: String,
    pub gflops: f64,
    /// The formula with its numbers.
    pub how: String,
}

fn lscpu_field(key: &str) -> Option<String> {
    let out = std::process::Command::new("lscpu").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn cpuinfo_field(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Peak of `threads` cores: cores × FMA units × lanes × 2 FLOPs × clock. The clock is lscpu's
/// "CPU max MHz" when it has one, else /proc/cpuinfo's "cpu MHz" (the current clock: a VM
/// often reports only that).
pub fn machine_peak(threads: usize) -> MachinePeak {
    let cpu_model = lscpu_field("Model name")
        .or_else(|| cpuinfo_field("model name"))
        .unwrap_or_else(|| "unknown".into());
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = threads.clamp(1, online);
    let (lanes, simd) = simd_lanes();
    let (mhz, clock_source) = match lscpu_field("CPU max MHz").and_then(|s| s.parse::<f64>().ok()) {
        Some(m) if m > 0.0 => (m, "lscpu 'CPU max MHz'".to_string()),
        _ => match cpuinfo_field("cpu MHz").and_then(|s| s.parse::<f64>().ok()) {
            Some(m) => (m, "/proc/cpuinfo 'cpu MHz' (no max clock reported)".into()),
            None => (0.0, "unknown (no clock found)".into()),
        },
    };
    let fma_units = 2;
    let clock_ghz = mhz / 1000.0;
    let gflops = (cores * fma_units * lanes * 2) as f64 * clock_ghz;
    let mut how = format!(
        "{cores} cores × {fma_units} FMA units × {lanes} f32 lanes ({simd}) × 2 FLOPs × {clock_ghz:.3} GHz ({clock_source}) = {gflops:.1} GFLOP/s"
    );
    if lanes == 16 {
        // Zen 4 splits 512-bit FMAs in two; then AVX2's figure is the real one.
        how.push_str(&format!(
            " (AVX2's 8 lanes: {:.1} GFLOP/s; the true figure where 512-bit FMAs are split)",
            gflops / 2.0
        ));
    }
    MachinePeak {
        cpu_model,
        cores,
        fma_units,
        lanes,
        simd,
        clock_ghz,
        clock_source,
        gflops,
        how,
    }
}

fn simd_lanes() -> (usize, String) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (16, "AVX-512".into());
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return (8, "AVX2+FMA".into());
        }
        (4, "SSE".into())
    }
    #[cfg(target_arch = "aarch64")]
    {
        (4, "NEON".into())
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        (1, "scalar".into())
    }
}

/// Resets the process's peak RSS to its current RSS (Linux ≥ 4.0: `5` into
/// /proc/self/clear_refs); false where that is not possible (peaks are then process-wide).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak RSS in bytes (VmHWM of /proc/self/status), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

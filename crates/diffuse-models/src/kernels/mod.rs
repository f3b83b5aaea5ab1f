//! Our own CPU kernels (docs/ARCHITECTURE.md, "one seam for speed"): each is a candle
//! CustomOp with a forward and a backward, checked against the plain candle op and by finite
//! differences. `ops` decides when they run (CPU, f32, `DIFFUSE_KERNELS` not `candle`).

/// Defines `$fast`, which runs the `#[inline(always)]` function `$generic` compiled for
/// AVX-512, else AVX2+FMA, when the CPU has them (checked at run time), else as built;
/// `$fast` may carry a visibility (`pub(super) name`).
macro_rules! multiversion {
    ($generic:ident, $vis:vis $fast:ident, fn($($a:ident: $t:ty),* $(,)?)) => {
        crate::kernels::multiversion!($generic, $vis $fast, fn($($a: $t),*) -> ());
    };
    ($generic:ident, $vis:vis $fast:ident, fn($($a:ident: $t:ty),* $(,)?) -> $r:ty) => {
        #[allow(clippy::too_many_arguments, clippy::unused_unit)]
        $vis fn $fast($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide($($a: $t),*) -> $r { $generic($($a),*) }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) -> $r { $generic($($a),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `wide` is compiled for.
                    return unsafe { wide($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($a),*) };
                }
            }
            $generic($($a),*)
        }
    };
}
pub(crate) use multiversion;

pub mod adamw;
pub mod attention;
pub mod conv2d;
pub mod group_norm;
pub mod linear;
mod matmul;
mod packed;
pub mod tune;
pub mod winograd;

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

/// Whether our kernels are enabled: `DIFFUSE_KERNELS=candle` selects candle's plain ops
/// (A/B comparisons, parity tests); anything else, or unset, selects ours.
pub fn enabled() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("DIFFUSE_KERNELS").as_deref(), Ok("candle")))
}

/// Tunes glibc malloc for tensor workloads: large blocks stay in the heap instead of being
/// mmapped and returned to the OS after every op (page faults and page zeroing were ~15% of
/// a CPU training step's profile; with this, −15% step time measured on the bench U-Net).
/// Call once at program start, before threads start; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The contiguous f32 data a CustomOp argument refers to.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let all = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => bail!("diffuse kernel: argument is not contiguous"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (made contiguous first if needed).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(f32_slice(c, l)?),
        _ => bail!("diffuse kernel: tensor is not on the CPU"),
    }
}

/// Borrows this thread's scratch buffer `key`, grown to `n` elements (contents unspecified):
/// kernels reuse their im2col / Winograd buffers across calls instead of allocating them.
///
/// A pool thread that waits inside a kernel may steal another forward's kernel (two threads'
/// forwards on the pool at once: concurrent tests, data-parallel ranks); if that one wants the
/// same buffer, it gets a fresh one instead of a second borrow.
pub(crate) fn with_scratch<R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    n: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|c| match c.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < n {
                *v = uninit_vec(n);
            }
            f(&mut v[..n])
        }
        Err(_) => f(&mut uninit_vec(n)),
    })
}

/// A new CPU f32 tensor from `data` with `dims`.
pub(crate) fn tensor_from(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &candle_core::Device::Cpu)
}

/// `bias`, or zeros `[out]` for a layer without one (`w` is `[out, …]`): our conv and linear
/// ops always take a bias argument.
pub(crate) fn bias_or_zeros(bias: Option<&Tensor>, w: &Tensor) -> Result<Tensor> {
    match bias {
        Some(b) => Ok(b.clone()),
        None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device()),
    }
}

/// Threads our kernels split work over (candle's own count: `RAYON_NUM_THREADS` or all cores).
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// Runs `f` on one of rayon's threads (the caller waits) unless it already runs on one. A
/// forward issues ~150 parallel kernels: called from a thread outside the pool, each is handed
/// over and waited for (a futex wake-up each way); from inside, the calling thread works on it
/// while the others steal. The batch-1 forward of the bench U-Net went 25.5 → 23.3 ms at
/// 2 threads (`diffuse bench`, six alternated pairs). The caller's convolution pinning and
/// shape recording (`tune::pinned`, `tune::record`, thread-local) go along and come back.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let ours = tune::Context::take();
    let (r, ours) = rayon::scope(|_| {
        let theirs = tune::Context::take();
        ours.install();
        let r = f();
        let ours = tune::Context::take();
        theirs.install();
        (r, ours)
    });
    ours.install();
    r
}

/// A `Vec<f32>` of `n` elements whose contents the caller overwrites entirely.
pub(crate) fn uninit_vec(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns; every caller writes all n elements before reading.
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

/// Σ x in 8 lanes: vectorizes, where `iter().sum()` is one dependent add per element.
#[inline(always)]
pub(crate) fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Splits `0..n` into `parts` contiguous ranges of near-equal length.
pub(crate) fn split_range(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (i * n / parts)..((i + 1) * n / parts))
        .collect()
}

#[cfg(test)]
thread_local! {
    /// Kernel forwards run on this thread (tests: recomputation must go through the kernels).
    pub(crate) static FORWARD_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts a kernel forward (tests only).
#[inline]
pub(crate) fn count_forward() {
    #[cfg(test)]
    FORWARD_CALLS.with(|c| c.set(c.get() + 1));
}

#[cfg(test)]
pub(crate) mod testutil {
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    pub fn rand_tensor(dims: &[usize], seed: u64) -> Tensor {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    pub fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// Asserts that a kernel's output `ours` matches the reference `theirs` (max relative
    /// error 1e-5) and that the gradients of Σ y·proj (a random projection from `seed`) with
    /// respect to each named input agree (2e-5). `case` labels the failure.
    pub fn assert_matches(
        case: usize,
        ours: Tensor,
        theirs: Tensor,
        inputs: &[(&str, &candle_core::Var)],
        seed: u64,
    ) {
        assert_eq!(ours.dims(), theirs.dims(), "case {case}");
        let e = max_rel(&ours, &theirs);
        assert!(e < 1e-5, "case {case} forward: {e}");
        let proj = rand_tensor(ours.dims(), seed);
        let grads = |y: Tensor| (y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let (go, gt) = (grads(ours), grads(theirs));
        for (name, v) in inputs {
            let e = max_rel(go.get(v).unwrap(), gt.get(v).unwrap());
            assert!(e < 2e-5, "case {case} d{name}: {e}");
        }
    }

    /// Central finite differences of `sum(f(inputs) * proj)` in f64-accumulated f32 against
    /// the analytic gradients from candle's backprop, at `probes` coordinates of each input.
    pub fn gradcheck(f: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], probes: usize, tol: f32) {
        let vars: Vec<candle_core::Var> = inputs
            .iter()
            .map(|t| candle_core::Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts);
        let proj = rand_tensor(out.dims(), 99);
        let loss = (&out * &proj).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let eval = |xs: &[Tensor]| -> f64 {
            let o = f(xs);
            let o = o.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let p = proj.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            o.iter().zip(&p).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (i, v) in vars.iter().enumerate() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for input {i}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let base = inputs[i].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gscale = g.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
            for _ in 0..probes {
                let j = r.random_range(0..base.len());
                let h = 1e-2f32;
                let mut plus = base.clone();
                plus[j] += h;
                let mut minus = base.clone();
                minus[j] -= h;
                let with = |vals: Vec<f32>| -> Vec<Tensor> {
                    let mut xs: Vec<Tensor> = inputs.to_vec();
                    xs[i] = Tensor::from_vec(vals, inputs[i].dims(), &Device::Cpu).unwrap();
                    xs
                };
                let fd = ((eval(&with(plus)) - eval(&with(minus))) / (2.0 * h as f64)) as f32;
                let err = (fd - g[j]).abs() / gscale;
                assert!(
                    err < tol,
                    "input {i} coord {j}: finite difference {fd} vs analytic {} (rel {err})",
                    g[j]
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scratch_buffers_survive_a_nested_borrow() {
        // A pool thread waiting inside a kernel can steal another forward's kernel that wants
        // the same thread-local buffer.
        thread_local! {
            static B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let outer = super::with_scratch(&B, 4, |a| {
            a.fill(1.0);
            let inner = super::with_scratch(&B, 8, |b| {
                b.fill(2.0);
                b.iter().sum::<f32>()
            });
            (a.iter().sum::<f32>(), inner)
        });
        assert_eq!(outer, (4.0, 16.0));
    }
}

//! Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
//! Diffusion Models", §3 and App. C.2; NVlabs/edm2 `training/phema.py`).
//!
//! Training keeps power-function EMAs, θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t with
//! β_t = (1 − 1/t)^(γ+1) (t the optimizer step, 1-based), whose averaging profile over the run
//! has relative width σ_rel = √((γ+1)/((γ+2)²(γ+3))), and saves them as snapshots
//! (`phema/step-N-σ.safetensors`). Afterwards any σ_rel at any step is the least-squares
//! combination of the snapshots whose profiles best match the wanted one (the inner products
//! of two power-function profiles are in closed form), which [`reconstruct`] writes as the
//! EMA weights of a pipeline folder.

use crate::trainer::{copy_dir, write};
use crate::{io_err, Error, Result};
use candle_core::{Device, Tensor, Var};
use diffuse_models::weights::CONFIG_NAME;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The folder of a run that holds the snapshots.
pub const SNAPSHOT_DIR: &str = "phema";
/// The profiles' state in a checkpoint (for exact resume).
pub const CHECKPOINT_FILE: &str = "phema.safetensors";

/// σ_rel of the power-function profile with exponent γ.
pub fn gamma_to_sigma_rel(gamma: f64) -> f64 {
    ((gamma + 1.0) / ((gamma + 2.0).powi(2) * (gamma + 3.0))).sqrt()
}

/// The γ whose profile has relative width `sigma_rel` (the largest real root of
/// γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²), found by bisection: σ_rel falls as γ grows).
pub fn sigma_rel_to_gamma(sigma_rel: f64) -> Result<f64> {
    let max = gamma_to_sigma_rel(0.0);
    if !(sigma_rel > 0.0 && sigma_rel < max) {
        return Err(Error::Invalid(format!(
            "sigma_rel must be in (0, {max:.4}), got {sigma_rel} (EDM2 uses 0.05 and 0.10)"
        )));
    }
    let (mut lo, mut hi) = (0.0f64, 1e9f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if gamma_to_sigma_rel(mid) > sigma_rel {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// β_t of the profile with exponent γ at optimizer step `t` (1-based; 0 at t = 1).
pub fn beta(gamma: f64, t: u64) -> f64 {
    (1.0 - 1.0 / t.max(1) as f64).powf(gamma + 1.0)
}

/// ∫ p_a p_b of two normalised power-function profiles ending at steps `a.0`, `b.0` with
/// exponents `a.1`, `b.1` (edm2's `power_function_correlation`).
fn correlation(a: (f64, f64), b: (f64, f64)) -> f64 {
    let ((a_t, a_g), (b_t, b_g)) = (a, b);
    let ratio = a_t / b_t;
    let e = if a_t < b_t { b_g } else { -a_g };
    (a_g + 1.0) * (b_g + 1.0) * ratio.powf(e) / ((a_g + b_g + 1.0) * a_t.max(b_t))
}

/// The weights of the snapshots `(step, γ)` whose sum best matches the profile `(step, γ)` in
/// least squares (numpy's `lstsq` with its default cutoff, by SVD).
pub fn solve_coefficients(snapshots: &[(f64, f64)], target: (f64, f64)) -> Result<Vec<f64>> {
    let n = snapshots.len();
    if n == 0 {
        return Err(Error::Invalid(
            "no post-hoc EMA snapshots to combine".into(),
        ));
    }
    let a = nalgebra::DMatrix::from_fn(n, n, |i, j| correlation(snapshots[i], snapshots[j]));
    let b = nalgebra::DVector::from_fn(n, |i, _| correlation(snapshots[i], target));
    let svd = a.svd(true, true);
    let cutoff = svd.singular_values.max() * n as f64 * f64::EPSILON;
    let x = svd
        .solve(&b, cutoff)
        .map_err(|e| Error::Invalid(format!("post-hoc EMA least squares: {e}")))?;
    Ok(x.iter().copied().collect())
}

/// The power-function EMAs a run keeps (one per σ_rel), in the order of the model's variables.
pub struct PowerEma {
    profiles: Vec<Profile>,
}

struct Profile {
    sigma_rel: f64,
    gamma: f64,
    shadow: Vec<Tensor>,
}

impl PowerEma {
    /// Profiles of the given widths, each starting at the current weights.
    pub fn new(vars: &[Var], sigma_rels: &[f64]) -> Result<Self> {
        let mut profiles = Vec::with_capacity(sigma_rels.len());
        for &sigma_rel in sigma_rels {
            profiles.push(Profile {
                sigma_rel,
                gamma: sigma_rel_to_gamma(sigma_rel)?,
                shadow: vars
                    .iter()
                    .map(|v| v.as_tensor().detach().copy())
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        Ok(PowerEma { profiles })
    }

    pub fn sigma_rels(&self) -> Vec<f64> {
        self.profiles.iter().map(|p| p.sigma_rel).collect()
    }

    /// The update after optimizer step `t` (1-based).
    pub fn step(&mut self, vars: &[Var], t: u64) -> Result<()> {
        for p in &mut self.profiles {
            let keep = beta(p.gamma, t);
            for (s, v) in p.shadow.iter_mut().zip(vars) {
                let x = v.as_tensor().detach();
                *s = ((&*s * keep)? + (x * (1.0 - keep))?)?.detach();
            }
        }
        Ok(())
    }

    /// Every profile's tensors under `{i}/{name}` (a checkpoint's `phema.safetensors`).
    pub fn state(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, p) in self.profiles.iter().enumerate() {
            for (n, t) in names.iter().zip(&p.shadow) {
                out.push((format!("{i}/{n}"), t.clone()));
            }
        }
        out
    }

    /// Restores [`Self::state`].
    pub fn load_state(
        &mut self,
        names: &[String],
        state: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<()> {
        for (i, p) in self.profiles.iter_mut().enumerate() {
            for (n, s) in names.iter().zip(p.shadow.iter_mut()) {
                let t = state.get(&format!("{i}/{n}")).ok_or_else(|| {
                    Error::Invalid(format!(
                        "the checkpoint's post-hoc EMA lacks profile {i} (σ_rel {}) of `{n}`: it was written with other train.posthoc_ema widths",
                        p.sigma_rel
                    ))
                })?;
                *s = t.to_device(device)?;
            }
        }
        Ok(())
    }

    /// Writes one snapshot file per profile for step `step` into `dir`.
    pub fn snapshot(&self, dir: &Path, step: u64, names: &[String]) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        for p in &self.profiles {
            let tensors: Vec<(String, Tensor)> = names
                .iter()
                .cloned()
                .zip(p.shadow.iter().cloned())
                .collect();
            let bytes = diffuse_models::weights::serialize_tensors(tensors)?;
            let path = dir.join(snapshot_name(step, p.sigma_rel));
            write(&path, &bytes)?;
        }
        Ok(())
    }
}

/// `step-00000250-0.0500.safetensors`.
fn snapshot_name(step: u64, sigma_rel: f64) -> String {
    format!("step-{step:08}-{sigma_rel:.4}.safetensors")
}

/// A snapshot file: (step, σ_rel, path).
pub fn snapshots(run: &Path) -> Result<Vec<(u64, f64, PathBuf)>> {
    let dir = run.join(SNAPSHOT_DIR);
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        Error::Invalid(format!(
            "{}: {e}; train with train.posthoc_ema = [0.05, 0.10] to keep post-hoc EMA snapshots",
            dir.display()
        ))
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let parsed = name
            .strip_prefix("step-")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .and_then(|s| s.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<f64>().ok()?)));
        if let Some((step, sigma_rel)) = parsed {
            out.push((step, sigma_rel, e.path()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no snapshots (step-N-σ.safetensors)",
            dir.display()
        )));
    }
    Ok(out)
}

/// What [`reconstruct`] made.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// The step and σ_rel reconstructed.
    pub step: u64,
    pub sigma_rel: f64,
    /// (step, σ_rel, coefficient) per snapshot used.
    pub coefficients: Vec<(u64, f64, f64)>,
    /// The tensors, under the snapshots' names.
    pub tensors: Vec<(String, Tensor)>,
}

/// The EMA of width `sigma_rel` at step `step` (default: the last snapshot's) of the run in
/// `run`, from the snapshots taken up to that step.
pub fn reconstruct(run: &Path, sigma_rel: f64, step: Option<u64>) -> Result<Reconstruction> {
    let all = snapshots(run)?;
    let last = all.last().expect("non-empty").0;
    let step = step.unwrap_or(last);
    let used: Vec<&(u64, f64, PathBuf)> = all.iter().filter(|s| s.0 <= step).collect();
    if used.is_empty() {
        return Err(Error::Invalid(format!(
            "no snapshot at or before step {step} (the first is at step {})",
            all[0].0
        )));
    }
    let mut points = Vec::with_capacity(used.len());
    for s in &used {
        points.push((s.0 as f64, sigma_rel_to_gamma(s.1)?));
    }
    let coefficients = solve_coefficients(&points, (step as f64, sigma_rel_to_gamma(sigma_rel)?))?;
    let mut sum: Vec<(String, Tensor)> = Vec::new();
    for (s, &c) in used.iter().zip(&coefficients) {
        let map = candle_core::safetensors::load(&s.2, &Device::Cpu)
            .map_err(|e| Error::Invalid(format!("{}: {e}", s.2.display())))?;
        if sum.is_empty() {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            for n in names {
                sum.push((n.clone(), (map[n].to_dtype(candle_core::DType::F64)? * c)?));
            }
            continue;
        }
        for (n, acc) in &mut sum {
            let t = map.get(n).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: lacks `{n}` (snapshots of another model?)",
                    s.2.display()
                ))
            })?;
            *acc = (&*acc + (t.to_dtype(candle_core::DType::F64)? * c)?)?;
        }
    }
    let tensors = sum
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(candle_core::DType::F32)?)))
        .collect::<Result<_>>()?;
    Ok(Reconstruction {
        step,
        sigma_rel,
        coefficients: used
            .iter()
            .zip(&coefficients)
            .map(|(s, &c)| (s.0, s.1, c))
            .collect(),
        tensors,
    })
}

/// `out` as the run's pipeline folder (`model_index.json`, `scheduler/`, `vae/` if any, the
/// network) with `r` as its EMA weights (`unet_ema/` or `transformer_ema/`), which `sample`,
/// `eval` and `serve` use by default.
pub fn write_pipeline(run: &Path, r: &Reconstruction, out: &Path) -> Result<()> {
    let component = ["unet", "transformer"]
        .into_iter()
        .find(|c| run.join(c).join(CONFIG_NAME).exists())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no unet/ or transformer/ folder (is it a finished diffuse train run?)",
                run.display()
            ))
        })?;
    // The parts as the trainer's finish copies them from a checkpoint.
    for dir in ["scheduler", "vae", component] {
        if run.join(dir).is_dir() {
            copy_dir(&run.join(dir), &out.join(dir))?;
        }
    }
    let index = run.join("model_index.json");
    write(
        &out.join("model_index.json"),
        &std::fs::read(&index).map_err(io_err(&index))?,
    )?;
    let ema = out.join(format!("{component}_ema"));
    std::fs::create_dir_all(&ema).map_err(io_err(&ema))?;
    let config = run.join(component).join(CONFIG_NAME);
    write(
        &ema.join(CONFIG_NAME),
        &std::fs::read(&config).map_err(io_err(&config))?,
    )?;
    let bytes = diffuse_models::weights::serialize_tensors(r.tensors.clone())?;
    write(&ema.join(diffuse_models::weights::WEIGHTS_NAME), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_rel_and_gamma_invert_each_other_as_in_edm2() {
        // edm2's std_to_exp (numpy.roots): 0.05 → 16.972198602303447, 0.10 → 6.937203937601809.
        let g = sigma_rel_to_gamma(0.05).unwrap();
        assert!((g - 16.972198602303447).abs() < 1e-9, "{g}");
        assert!((sigma_rel_to_gamma(0.10).unwrap() - 6.937203937601809).abs() < 1e-9);
        for s in [0.01, 0.05, 0.1, 0.2, 0.28] {
            let g = sigma_rel_to_gamma(s).unwrap();
            assert!((gamma_to_sigma_rel(g) - s).abs() < 1e-12, "{s}");
        }
        assert!(sigma_rel_to_gamma(0.3).is_err() && sigma_rel_to_gamma(0.0).is_err());
        assert_eq!(beta(7.0, 1), 0.0);
    }

    /// A scalar "weight" with a trend and a wiggle, averaged by two profiles with snapshots
    /// every 50 steps; the reconstruction of a third width matches its running EMA.
    #[test]
    fn a_third_width_is_reconstructed_from_two_profiles() {
        let w = |t: u64| {
            let x = t as f64 / 1000.0;
            (3.0 * x).sin() + 0.5 * x * x
        };
        let profiles = [0.05, 0.10];
        let gammas: Vec<f64> = profiles
            .iter()
            .map(|&s| sigma_rel_to_gamma(s).unwrap())
            .collect();
        let target_gamma = sigma_rel_to_gamma(0.07).unwrap();
        let (mut ema, mut target) = (vec![0.0; 2], 0.0);
        let mut snaps = Vec::new();
        for t in 1..=1000u64 {
            for (e, &g) in ema.iter_mut().zip(&gammas) {
                let b = beta(g, t);
                *e = b * *e + (1.0 - b) * w(t);
            }
            let b = beta(target_gamma, t);
            target = b * target + (1.0 - b) * w(t);
            if t % 50 == 0 {
                for (e, &g) in ema.iter().zip(&gammas) {
                    snaps.push(((t as f64, g), *e));
                }
            }
        }
        let points: Vec<(f64, f64)> = snaps.iter().map(|s| s.0).collect();
        let c = solve_coefficients(&points, (1000.0, target_gamma)).unwrap();
        let got: f64 = c.iter().zip(&snaps).map(|(c, s)| c * s.1).sum();
        // The two profiles' own values differ by ~0.08; the reconstruction lands far closer.
        let spread = (ema[0] - ema[1]).abs();
        assert!(spread > 0.05, "{spread}");
        assert!(
            (got - target).abs() < 0.02 * spread,
            "{got} vs {target} (spread {spread})"
        );
        // A snapshot's own profile comes back as itself.
        let own = solve_coefficients(&points, *points.last().unwrap()).unwrap();
        assert!((own.last().unwrap() - 1.0).abs() < 1e-6, "{own:?}");
    }
}

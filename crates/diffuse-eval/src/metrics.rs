//! Distribution metrics over feature sets, in f64.
//! - FID (Heusel et al. 2017; pytorch-fid `calculate_frechet_distance`): ‖μ₁ − μ₂‖² + tr Σ₁ +
//!   tr Σ₂ − 2 tr √(√Σ₁ Σ₂ √Σ₁), the square root by symmetric eigendecomposition (stable where
//!   scipy's `sqrtm(Σ₁Σ₂)` of a non-symmetric product can turn complex).
//! - KID (Bińkowski et al. 2018; torch-fidelity `kid.py`, clean-fid `kernel_distance`): unbiased
//!   MMD² with k(x, y) = (xᵀy/d + 1)³ over random subsets (default 100 × 1000, clamped).
//! - Precision/recall (Kynkäänniemi et al. 2019, NVlabs `precision_recall.py`): k-NN (k = 3)
//!   balls around each point approximate the manifolds.
//! - An Inception-Score-style score (Salimans et al. 2016) from class probabilities.

use crate::{Error, Result};
use nalgebra::{DMatrix, DVector};
use rand::seq::index::sample;
use rand::SeedableRng;

/// Features, one row per image.
pub type Features = DMatrix<f64>;

/// Gaussian fit of a feature set: mean and covariance (ddof 1, as `np.cov(rowvar=False)`).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    pub mu: DVector<f64>,
    pub sigma: DMatrix<f64>,
    /// Images the statistics were computed from.
    pub count: usize,
}

impl GaussianStats {
    pub fn from_features(f: &Features) -> Result<Self> {
        let n = f.nrows();
        if n < 2 {
            return Err(Error::Input(format!(
                "FID needs at least 2 images per set to estimate a covariance; got {n}"
            )));
        }
        let mu = f.row_mean().transpose();
        let mut centered = f.clone();
        for mut row in centered.row_iter_mut() {
            row -= mu.transpose();
        }
        let sigma = (centered.transpose() * &centered) / (n as f64 - 1.0);
        Ok(GaussianStats {
            mu,
            sigma,
            count: n,
        })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }
}

/// √A of a symmetric positive semi-definite matrix, as U diag(√s) Uᵀ from its SVD (for a PSD
/// matrix the singular values are the eigenvalues). nalgebra's `symmetric_eigen` returns −∞/NaN
/// on covariances with zero-variance features (dead ReLU units); the SVD does not.
fn sqrt_psd(a: &DMatrix<f64>) -> DMatrix<f64> {
    let svd = a.clone().svd(true, false);
    let u = svd.u.expect("computed");
    let d = DMatrix::from_diagonal(&svd.singular_values.map(f64::sqrt));
    &u * d * u.transpose()
}

/// Fréchet distance between two Gaussians.
pub fn fid(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    if a.dim() != b.dim() {
        return Err(Error::Input(format!(
            "feature sizes differ: {} vs {}",
            a.dim(),
            b.dim()
        )));
    }
    let diff = &a.mu - &b.mu;
    let s1 = sqrt_psd(&a.sigma);
    let mut m = &s1 * &b.sigma * &s1;
    m = (&m + m.transpose()) * 0.5; // symmetric up to rounding; make it exactly so
                                    // tr √M: M is PSD, so its singular values are its eigenvalues.
    let tr_covmean: f64 = m.singular_values().iter().map(|l| l.sqrt()).sum();
    let v = diff.dot(&diff) + a.sigma.trace() + b.sigma.trace() - 2.0 * tr_covmean;
    if !v.is_finite() {
        return Err(Error::Input(format!(
            "FID is not finite ({v}): non-finite features or statistics"
        )));
    }
    Ok(v)
}

/// KID settings (torch-fidelity's defaults).
#[derive(Debug, Clone, Copy)]
pub struct KidOptions {
    pub subsets: usize,
    pub subset_size: usize,
    pub seed: u64,
}

impl Default for KidOptions {
    fn default() -> Self {
        KidOptions {
            subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

/// Unbiased MMD² between two equal-size sets with the cubic polynomial kernel.
pub fn mmd2_poly(x: &Features, y: &Features) -> f64 {
    let m = x.nrows() as f64;
    let d = x.ncols() as f64;
    let k = |a: &Features, b: &Features| (a * b.transpose()).map(|v| (v / d + 1.0).powi(3));
    let (kxx, kyy, kxy) = (k(x, x), k(y, y), k(x, y));
    let off = |a: &DMatrix<f64>| a.sum() - a.trace();
    (off(&kxx) + off(&kyy)) / (m * (m - 1.0)) - 2.0 * kxy.sum() / (m * m)
}

/// KID mean and standard deviation (ddof 0) over subsets drawn with the given index lists.
pub fn kid_with_subsets(
    a: &Features,
    b: &Features,
    subsets: &[(Vec<usize>, Vec<usize>)],
) -> (f64, f64) {
    let vals: Vec<f64> = subsets
        .iter()
        .map(|(ia, ib)| mmd2_poly(&a.select_rows(ia), &b.select_rows(ib)))
        .collect();
    mean_std(&vals)
}

/// KID with seeded random subsets of `min(subset_size, |a|, |b|)` images each.
pub fn kid(a: &Features, b: &Features, opts: KidOptions) -> Result<(f64, f64)> {
    let m = opts.subset_size.min(a.nrows()).min(b.nrows());
    if m < 2 || opts.subsets == 0 {
        return Err(Error::Input(format!(
            "KID needs at least 2 images per set; got {} and {}",
            a.nrows(),
            b.nrows()
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let subsets: Vec<_> = (0..opts.subsets)
        .map(|_| {
            (
                sample(&mut rng, a.nrows(), m).into_vec(),
                sample(&mut rng, b.nrows(), m).into_vec(),
            )
        })
        .collect();
    Ok(kid_with_subsets(a, b, &subsets))
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Squared Euclidean distances `[|a|, |b|]`, in row blocks.
fn sq_dists(a: &Features, b: &Features, rows: std::ops::Range<usize>) -> DMatrix<f64> {
    let blk = a.rows(rows.start, rows.len());
    let na: Vec<f64> = blk.row_iter().map(|r| r.norm_squared()).collect();
    let nb: Vec<f64> = b.row_iter().map(|r| r.norm_squared()).collect();
    let mut d = blk * b.transpose();
    for (i, mut row) in d.row_iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (na[i] + nb[j] - 2.0 * *v).max(0.0);
        }
    }
    d
}

const BLOCK: usize = 1024;

/// Squared distance of each row to its k-th nearest other row (the point itself excluded).
pub fn knn_radii(f: &Features, k: usize) -> Result<Vec<f64>> {
    if f.nrows() <= k {
        return Err(Error::Input(format!(
            "precision/recall with k = {k} needs more than {k} images per set; got {}",
            f.nrows()
        )));
    }
    let mut radii = Vec::with_capacity(f.nrows());
    for s in (0..f.nrows()).step_by(BLOCK) {
        let d = sq_dists(f, f, s..(s + BLOCK).min(f.nrows()));
        for row in d.row_iter() {
            let mut v: Vec<f64> = row.iter().copied().collect();
            // Index k of the sorted row: index 0 is the point itself (distance 0).
            let (_, kth, _) = v.select_nth_unstable_by(k, |x, y| x.total_cmp(y));
            radii.push(*kth);
        }
    }
    Ok(radii)
}

/// Fraction of `queries` inside at least one k-NN ball of `manifold` (balls of `radii`).
pub fn coverage(manifold: &Features, radii: &[f64], queries: &Features) -> f64 {
    let mut inside = 0usize;
    for s in (0..queries.nrows()).step_by(BLOCK) {
        let d = sq_dists(queries, manifold, s..(s + BLOCK).min(queries.nrows()));
        inside += d
            .row_iter()
            .filter(|row| row.iter().zip(radii).any(|(dist, r)| dist <= r))
            .count();
    }
    inside as f64 / queries.nrows() as f64
}

/// (precision, recall) of `fake` against `real` with k-NN manifolds.
pub fn precision_recall(real: &Features, fake: &Features, k: usize) -> Result<(f64, f64)> {
    let rr = knn_radii(real, k)?;
    let rf = knn_radii(fake, k)?;
    Ok((coverage(real, &rr, fake), coverage(fake, &rf, real)))
}

/// [`inception_score`] after a seeded shuffle of the rows, as torch-fidelity shuffles
/// (`shuffle=True`) so that no split holds one class only (its permutation is numpy's; this
/// one is ChaCha8's).
pub fn inception_score_shuffled(probs: &Features, splits: usize, seed: u64) -> Result<(f64, f64)> {
    let n = probs.nrows();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        order.swap(i, rand::Rng::random_range(&mut rng, 0..=i));
    }
    inception_score(&probs.select_rows(&order), splits)
}

/// Inception-Score-style score exp(E KL(p(y|x) ‖ p(y))) of class probabilities `[n, classes]`,
/// mean and std over `splits` contiguous parts (Salimans et al.; torch-fidelity's splits = 10).
pub fn inception_score(probs: &Features, splits: usize) -> Result<(f64, f64)> {
    let n = probs.nrows();
    if splits == 0 || n < splits {
        return Err(Error::Input(format!(
            "the IS needs at least {splits} images; got {n}"
        )));
    }
    let scores: Vec<f64> = (0..splits)
        .map(|s| {
            let (lo, hi) = (s * n / splits, (s + 1) * n / splits);
            let part = probs.rows(lo, hi - lo);
            let py = part.row_mean();
            let kl: f64 = part
                .row_iter()
                .map(|p| {
                    p.iter()
                        .zip(py.iter())
                        .filter(|(a, _)| **a > 0.0)
                        .map(|(a, b)| a * (a.ln() - b.ln()))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / (hi - lo) as f64;
            kl.exp()
        })
        .collect();
    Ok(mean_std(&scores))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn random(n: usize, d: usize, shift: f64, seed: u64) -> Features {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        DMatrix::from_fn(n, d, |_, j| rng.random::<f64>() + shift * (j % 2) as f64)
    }

    #[test]
    fn fid_of_a_set_with_itself_is_zero_and_matches_closed_form_in_1d() {
        let a = random(300, 8, 0.0, 1);
        let s = GaussianStats::from_features(&a).unwrap();
        assert!(fid(&s, &s).unwrap().abs() < 1e-9);
        // 1-D: (μ₁−μ₂)² + σ₁² + σ₂² − 2σ₁σ₂.
        let g = |mu: f64, var: f64| GaussianStats {
            mu: DVector::from_element(1, mu),
            sigma: DMatrix::from_element(1, 1, var),
            count: 2,
        };
        let v = fid(&g(1.0, 4.0), &g(3.0, 9.0)).unwrap();
        assert!((v - (4.0 + 4.0 + 9.0 - 12.0)).abs() < 1e-12, "{v}");
    }

    #[test]
    fn fid_survives_zero_variance_features_and_rank_deficiency() {
        // 20 images, 30 features, 10 of them always 0 (dead ReLU units): Σ is singular.
        let mut a = random(20, 30, 0.0, 7);
        let mut b = random(20, 30, 0.3, 8);
        for j in 0..10 {
            a.column_mut(j).fill(0.0);
            b.column_mut(j).fill(0.0);
        }
        let (sa, sb) = (
            GaussianStats::from_features(&a).unwrap(),
            GaussianStats::from_features(&b).unwrap(),
        );
        let (ab, ba) = (fid(&sa, &sb).unwrap(), fid(&sb, &sa).unwrap());
        assert!(ab > 0.0 && (ab - ba).abs() < 1e-8 * ab, "{ab} {ba}");
        assert!(fid(&sa, &sa).unwrap().abs() < 1e-8);
    }

    #[test]
    fn kid_is_near_zero_for_one_distribution_and_positive_for_two() {
        let a = random(400, 16, 0.0, 2);
        let b = random(400, 16, 0.0, 3);
        let c = random(400, 16, 0.5, 4);
        let opts = KidOptions {
            subsets: 10,
            subset_size: 100,
            seed: 0,
        };
        let same = kid(&a, &b, opts).unwrap().0;
        let diff = kid(&a, &c, opts).unwrap().0;
        assert!(same.abs() < 0.01 && diff > 0.05, "{same} {diff}");
    }

    #[test]
    fn precision_recall_of_a_subset() {
        // Fake = far-away points: precision 0; real covers itself: recall of real by real is 1.
        let real = random(200, 4, 0.0, 5);
        let far = random(50, 4, 100.0, 6);
        let (p, _) = precision_recall(&real, &far, 3).unwrap();
        assert_eq!(p, 0.0);
        let (p, r) = precision_recall(&real, &real, 3).unwrap();
        assert_eq!((p, r), (1.0, 1.0));
        assert!(precision_recall(&real.rows(0, 3).into_owned(), &far, 3).is_err());
    }

    #[test]
    fn is_bounds() {
        // One-hot and balanced: IS = number of classes; uniform: 1.
        let onehot = DMatrix::from_fn(100, 10, |i, j| (i % 10 == j) as u8 as f64);
        let (m, _) = inception_score(&onehot, 10).unwrap();
        assert!((m - 10.0).abs() < 1e-9, "{m}");
        // Sorted by class, contiguous splits see one class each (IS 1); shuffled, about 10.
        let sorted = DMatrix::from_fn(100, 10, |i, j| (i / 10 == j) as u8 as f64);
        assert!((inception_score(&sorted, 10).unwrap().0 - 1.0).abs() < 1e-9);
        let (m, _) = inception_score_shuffled(&sorted, 10, 2020).unwrap();
        assert!(m > 4.0, "{m}");
        let uniform = DMatrix::from_element(100, 10, 0.1);
        assert!((inception_score(&uniform, 10).unwrap().0 - 1.0).abs() < 1e-12);
    }
}

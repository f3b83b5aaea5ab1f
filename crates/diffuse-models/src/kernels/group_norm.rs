//! Group normalization (Wu & He 2018; torch `F.group_norm` semantics: biased variance, per-channel
//! affine) with an optional fused SiLU, forward and backward in one pass per (image, group).
//! Statistics are summed per row in 8 f32 lanes and accumulated in f64; the inner loops are
//! compiled for AVX-512 or AVX2+FMA (chosen at run time) and for the baseline target.

use super::{f32_slice, tensor_from, uninit_vec, with_f32};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// `e^x` for f32 (Cephes `expf`: range reduction by ln 2 and a degree-6 polynomial, ~1 ulp),
/// written so that the loops around it vectorize.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2ⁿ from the float's bits, not through `n as i32` (a saturating, NaN-checking conversion
    // that keeps the loop scalar): 2²³ + n + 127 holds n + 127 in its low mantissa bits.
    e * f32::from_bits((n + (8_388_608.0 + 127.0)).to_bits() << 23)
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// Σ (x − m)² over a row, in 8 lanes.
#[inline(always)]
pub(super) fn sum_sq(x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|v| (v - m) * (v - m)).sum();
    for c in chunks {
        for i in 0..8 {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Mean and 1/√(var + eps) of one group's rows (each `l` long).
#[inline(always)]
fn stats(xg: &[f32], l: usize, eps: f64) -> (f32, f32) {
    let n = xg.len() as f64;
    let mean = xg
        .chunks_exact(l)
        .map(|r| super::sum_lanes(r) as f64)
        .sum::<f64>()
        / n;
    let var = xg
        .chunks_exact(l)
        .map(|r| sum_sq(r, mean as f32) as f64)
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

#[inline(always)]
fn fwd_group(
    xg: &[f32],
    yg: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    l: usize,
    eps: f64,
    silu: bool,
) -> (f32, f32) {
    let (mean, rstd) = stats(xg, l, eps);
    for (c, (xr, yr)) in xg.chunks_exact(l).zip(yg.chunks_exact_mut(l)).enumerate() {
        let a = rstd * gamma[c];
        let b = beta[c] - mean * a;
        if silu {
            for (y, x) in yr.iter_mut().zip(xr) {
                let z = x * a + b;
                *y = z * sigmoid(z);
            }
        } else {
            for (y, x) in yr.iter_mut().zip(xr) {
                *y = x * a + b;
            }
        }
    }
    (mean, rstd)
}

/// dz = ∂L/∂(γ x̂ + β): dy, or dy·silu'(z) with silu'(z) = σ(z)(1 + z(1 − σ(z))).
#[inline(always)]
fn dz_of(dy: f32, xh: f32, gamma: f32, beta: f32, silu: bool) -> f32 {
    if silu {
        let z = xh * gamma + beta;
        let s = sigmoid(z);
        dy * s * (1.0 + z * (1.0 - s))
    } else {
        dy
    }
}

/// One group's backward: writes dx and this image's dγ, dβ for the group's channels, given
/// the forward's mean and 1/σ when it kept them (else they are computed again).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_group(
    saved: Option<(f32, f32)>,
    xg: &[f32],
    dyg: &[f32],
    dxg: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    l: usize,
    eps: f64,
    silu: bool,
) {
    let (mean, rstd) = saved.unwrap_or_else(|| stats(xg, l, eps));
    // Pass 1: dz = dy·silu'(z) into dx; per channel Σ dz·x̂ and Σ dz.
    for c in 0..gamma.len() {
        let (xr, dyr) = (&xg[c * l..(c + 1) * l], &dyg[c * l..(c + 1) * l]);
        let dzr = &mut dxg[c * l..(c + 1) * l];
        let (g, bt) = (gamma[c], beta[c]);
        let mut acc_g = [0f32; 8];
        let mut acc_b = [0f32; 8];
        let mut k = 0;
        for ((dz8, x8), dy8) in dzr
            .chunks_exact_mut(8)
            .zip(xr.chunks_exact(8))
            .zip(dyr.chunks_exact(8))
        {
            for i in 0..8 {
                let xh = (x8[i] - mean) * rstd;
                let dz = dz_of(dy8[i], xh, g, bt, silu);
                dz8[i] = dz;
                acc_g[i] += dz * xh;
                acc_b[i] += dz;
            }
            k += 8;
        }
        let (mut sg, mut sb) = (acc_g.iter().sum::<f32>(), acc_b.iter().sum::<f32>());
        for i in k..l {
            let xh = (xr[i] - mean) * rstd;
            let dz = dz_of(dyr[i], xh, g, bt, silu);
            dzr[i] = dz;
            sg += dz * xh;
            sb += dz;
        }
        dgamma[c] = sg;
        dbeta[c] = sb;
    }
    // Σ dx̂ = Σ_c γ_c Σ dz and Σ dx̂·x̂ = Σ_c γ_c Σ dz·x̂.
    let n = xg.len() as f32;
    let s1: f32 = gamma
        .iter()
        .zip(dbeta.iter())
        .map(|(g, b)| g * b)
        .sum::<f32>()
        / n;
    let s2: f32 = gamma
        .iter()
        .zip(dgamma.iter())
        .map(|(g, d)| g * d)
        .sum::<f32>()
        / n;
    // dx = rstd·(γ dz − s1 − x̂ s2) = A_c·dz + B·x + C
    let bx = -rstd * rstd * s2;
    let cst = rstd * rstd * mean * s2 - rstd * s1;
    for c in 0..gamma.len() {
        let a = rstd * gamma[c];
        let xr = &xg[c * l..(c + 1) * l];
        for (d, x) in dxg[c * l..(c + 1) * l].iter_mut().zip(xr) {
            *d = a * *d + bx * x + cst;
        }
    }
}

crate::kernels::multiversion!(
    fwd_group,
    fwd_group_mv,
    fn(
        xg: &[f32],
        yg: &mut [f32],
        gamma: &[f32],
        beta: &[f32],
        l: usize,
        eps: f64,
        silu: bool,
    ) -> (f32, f32)
);
crate::kernels::multiversion!(
    bwd_group,
    bwd_group_mv,
    fn(
        saved: Option<(f32, f32)>,
        xg: &[f32],
        dyg: &[f32],
        dxg: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
        gamma: &[f32],
        beta: &[f32],
        l: usize,
        eps: f64,
        silu: bool,
    )
);

/// The shape of a GroupNorm input: `[b, c, …]` with `l` = product of the trailing dims.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    c: usize,
    l: usize,
    cpg: usize,
}

fn dims(shape: &[usize], groups: usize) -> Result<Dims> {
    if shape.len() < 2 {
        bail!("group_norm: input must be [b, c, ...], got {shape:?}");
    }
    let (b, c) = (shape[0], shape[1]);
    if groups == 0 || !c.is_multiple_of(groups) {
        bail!("group_norm: {c} channels do not split into {groups} groups");
    }
    Ok(Dims {
        b,
        c,
        l: shape[2..].iter().product(),
        cpg: c / groups,
    })
}

/// Each (image, group)'s mean and 1/σ, in that order.
pub type GroupStats = Vec<(f32, f32)>;

/// Forward: `silu?(γ·(x − μ_g)/σ_g + β)` for x `[b, c, …]`, γ and β `[c]`; also each
/// (image, group)'s mean and 1/σ, which the backward takes instead of a second statistics pass.
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    shape: &[usize],
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<(Vec<f32>, GroupStats)> {
    let d = dims(shape, groups)?;
    let mut y = uninit_vec(x.len());
    let gl = d.cpg * d.l;
    if gl == 0 {
        return Ok((y, Vec::new()));
    }
    let saved = y
        .par_chunks_mut(gl)
        .zip(x.par_chunks(gl))
        .enumerate()
        .map(|(j, (yg, xg))| {
            let c0 = (j % groups) * d.cpg;
            fwd_group_mv(
                xg,
                yg,
                &gamma[c0..c0 + d.cpg],
                &beta[c0..c0 + d.cpg],
                d.l,
                eps,
                silu,
            )
        })
        .collect();
    Ok((y, saved))
}

/// Backward: `(dx, dγ, dβ)`, given the forward's statistics when it kept them.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    saved: Option<&[(f32, f32)]>,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dy: &[f32],
    shape: &[usize],
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let d = dims(shape, groups)?;
    let gl = d.cpg * d.l;
    let mut dx = uninit_vec(x.len());
    let mut dg_parts = vec![0f32; d.b * d.c];
    let mut db_parts = vec![0f32; d.b * d.c];
    if gl > 0 {
        dx.par_chunks_mut(gl)
            .zip(x.par_chunks(gl))
            .zip(dy.par_chunks(gl))
            .zip(dg_parts.par_chunks_mut(d.cpg))
            .zip(db_parts.par_chunks_mut(d.cpg))
            .enumerate()
            .for_each(|(j, ((((dxg, xg), dyg), dgp), dbp))| {
                let c0 = (j % groups) * d.cpg;
                let (g, b) = (&gamma[c0..c0 + d.cpg], &beta[c0..c0 + d.cpg]);
                let st = saved.map(|s| s[j]);
                bwd_group_mv(st, xg, dyg, dxg, dgp, dbp, g, b, d.l, eps, silu)
            });
    }
    let reduce = |parts: &[f32]| -> Vec<f32> {
        let mut out = vec![0f32; d.c];
        for row in parts.chunks_exact(d.c) {
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        }
        out
    };
    Ok((dx, reduce(&dg_parts), reduce(&db_parts)))
}

/// The CustomOp: arguments `(x, γ, β)`. The graph keeps the op between forward and backward,
/// so it carries the forward's statistics to the backward.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
    saved: OnceLock<GroupStats>,
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "diffuse-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        super::count_forward();
        let (y, saved) = forward(
            f32_slice(s1, l1)?,
            f32_slice(s2, l2)?,
            f32_slice(s3, l3)?,
            l1.dims(),
            self.groups,
            self.eps,
            self.silu,
        )?;
        // A second forward through the same op (none in this crate) keeps the first's.
        let _ = self.saved.set(saved);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dg, db) = with_f32(x, |xs| {
            with_f32(gamma, |g| {
                with_f32(beta, |b| {
                    with_f32(dy, |dys| {
                        let saved = self.saved.get().map(Vec::as_slice);
                        backward(
                            saved,
                            xs,
                            g,
                            b,
                            dys,
                            x.dims(),
                            self.groups,
                            self.eps,
                            self.silu,
                        )
                    })
                })
            })
        })?;
        Ok((
            Some(tensor_from(dx, x.dims())?),
            Some(tensor_from(dg, gamma.dims())?),
            Some(tensor_from(db, beta.dims())?),
        ))
    }
}

/// `silu?(group_norm(x))` through the kernel (f32 on the CPU).
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        GroupNorm {
            groups,
            eps,
            silu,
            saved: OnceLock::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{assert_matches, gradcheck, rand_tensor};

    fn reference(x: &Tensor, g: &Tensor, b: &Tensor, groups: usize, silu: bool) -> Tensor {
        let c = x.dim(1).unwrap();
        let n = candle_nn::GroupNorm::new(g.clone(), b.clone(), c, groups, 1e-5).unwrap();
        let y = candle_nn::Module::forward(&n, x).unwrap();
        if silu {
            y.silu().unwrap()
        } else {
            y
        }
    }

    #[test]
    fn exp_is_accurate() {
        for i in -870..=870 {
            let x = i as f32 * 0.1 + 0.013;
            let (a, b) = (exp(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "exp({x}) = {a} vs {b}");
        }
    }

    #[test]
    fn forward_and_backward_match_candle() {
        for (i, &(shape, groups, silu)) in [
            (&[2usize, 8, 5, 7][..], 4usize, true),
            (&[3, 6, 4, 4][..], 3, false),
            (&[1, 32, 16, 16][..], 8, true),
            (&[2, 4, 9][..], 1, true),
            (&[2, 6, 3, 3][..], 6, false),
        ]
        .iter()
        .enumerate()
        {
            let c = shape[1];
            let x = candle_core::Var::from_tensor(&(rand_tensor(shape, i as u64) * 3.0).unwrap())
                .unwrap();
            let g = candle_core::Var::from_tensor(&rand_tensor(&[c], 10 + i as u64)).unwrap();
            let b = candle_core::Var::from_tensor(&rand_tensor(&[c], 20 + i as u64)).unwrap();
            let ours = group_norm(&x, &g, &b, groups, 1e-5, silu).unwrap();
            let theirs = reference(&x, &g, &b, groups, silu);
            let inputs = [("x", &x), ("gamma", &g), ("beta", &b)];
            assert_matches(i, ours, theirs, &inputs, 30);
        }
    }

    #[test]
    fn saved_statistics_give_the_recomputed_backward() {
        let shape = [3usize, 8, 5, 5];
        let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (x, dy) = (v(rand_tensor(&shape, 1)), v(rand_tensor(&shape, 2)));
        let (g, b) = (v(rand_tensor(&[8], 3)), v(rand_tensor(&[8], 4)));
        let (_, saved) = forward(&x, &g, &b, &shape, 4, 1e-5, true).unwrap();
        assert_eq!(saved.len(), 3 * 4);
        let with = backward(Some(&saved), &x, &g, &b, &dy, &shape, 4, 1e-5, true).unwrap();
        let without = backward(None, &x, &g, &b, &dy, &shape, 4, 1e-5, true).unwrap();
        assert_eq!(with, without);
    }

    #[test]
    fn finite_differences() {
        for silu in [false, true] {
            let f = |t: &[Tensor]| group_norm(&t[0], &t[1], &t[2], 2, 1e-5, silu).unwrap();
            let inputs = [
                rand_tensor(&[2, 4, 3, 5], 1),
                rand_tensor(&[4], 2),
                rand_tensor(&[4], 3),
            ];
            gradcheck(&f, &inputs, 12, 3e-3);
        }
    }

    #[test]
    fn bad_groups_are_clear() {
        let x = rand_tensor(&[1, 6, 2, 2], 0);
        let g = rand_tensor(&[6], 1);
        let e = group_norm(&x, &g, &g, 4, 1e-5, false).unwrap_err();
        assert!(e.to_string().contains("do not split into 4 groups"), "{e}");
    }
}

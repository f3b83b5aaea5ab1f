//! The optimizer's per-parameter passes on the CPU, in place (as `torch.optim.AdamW(fused=True)`
//! and `foreach` do): the moments and the parameter are updated in their own storage, with no
//! temporary tensor per operation. candle's tensor path costs ~10 passes over every parameter
//! and 8 fresh allocations per step; these cost three passes and none. Each pass performs the
//! same f32 operations in the same order as the tensor path (`diffuse_train::optim`), so both
//! give the same bits.

use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};

/// The scalars of one AdamW step, already in the f32 form the tensor path multiplies by.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// 1 − β1.
    pub one_minus_beta1: f32,
    /// β2.
    pub beta2: f32,
    /// 1 − β2.
    pub one_minus_beta2: f32,
    /// 1 / √(1 − β2ᵗ).
    pub inv_bias_correction2: f32,
    /// ε.
    pub eps: f32,
    /// 1 − lr · weight decay.
    pub decay: f32,
    /// lr / (1 − β1ᵗ).
    pub step_size: f32,
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("adamw: tensor is not contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => bail!("adamw: tensor is not f32"),
    }
}

/// `dst[i] = f(dst[i], src[i])` in place: the moment and EMA updates.
struct Update<F: Fn(f32, f32) -> f32> {
    name: &'static str,
    f: F,
}

impl<F: Fn(f32, f32) -> f32> InplaceOp2 for Update<F> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, d: &mut CpuStorage, ld: &Layout, s: &CpuStorage, ls: &Layout) -> Result<()> {
        let (d, s) = (slice_mut(d, ld)?, super::f32_slice(s, ls)?);
        for (d, s) in d.iter_mut().zip(s) {
            *d = (self.f)(*d, *s);
        }
        Ok(())
    }
}

/// p ← p (1 − lr λ) − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε).
struct Param(AdamWStep);

impl InplaceOp3 for Param {
    fn name(&self) -> &'static str {
        "diffuse-adamw-p"
    }
    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        lp: &Layout,
        m: &CpuStorage,
        lm: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<()> {
        let c = self.0;
        let p = slice_mut(p, lp)?;
        let (m, v) = (super::f32_slice(m, lm)?, super::f32_slice(v, lv)?);
        for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
            let denom = (v.sqrt() * c.inv_bias_correction2 + 0.0) * 1.0 + c.eps;
            *p = (*p * c.decay + 0.0) - ((m / denom) * c.step_size + 0.0);
        }
        Ok(())
    }
}

/// One EMA step of `shadow` towards `p` with `one_minus_decay` = 1 − d, in place (callers
/// check [`applies`]; `shadow` must not share storage with anything else).
pub fn ema_step(shadow: &Tensor, p: &Tensor, one_minus_decay: f32) -> Result<()> {
    // shadow ← shadow − (shadow − p)(1 − d)
    let f = |s: f32, p: f32| s - ((s - p) * one_minus_decay + 0.0);
    shadow.inplace_op2(
        p,
        &Update {
            name: "diffuse-ema",
            f,
        },
    )
}

/// Whether the in-place passes apply: every tensor f32, contiguous and on the CPU, with one shape.
pub fn applies(ts: &[&Tensor]) -> bool {
    super::enabled()
        && ts.iter().all(|t| {
            t.device().is_cpu()
                && t.dtype() == DType::F32
                && t.is_contiguous()
                && t.dims() == ts[0].dims()
        })
}

/// One AdamW step of parameter `p` with gradient `g` and moments `m`, `v`, all updated in place
/// (callers check [`applies`] first; `m` and `v` must not share storage with anything else).
pub fn step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: AdamWStep) -> Result<()> {
    // m ← m + (1 − β1)(g − m)
    let first = |m: f32, g: f32| m + (g - m) * c.one_minus_beta1;
    m.inplace_op2(
        g,
        &Update {
            name: "diffuse-adamw-m",
            f: first,
        },
    )?;
    // v ← β2 v + (1 − β2) g²
    let second = |v: f32, g: f32| (v * c.beta2 + 0.0) + ((g * g) * c.one_minus_beta2 + 0.0);
    v.inplace_op2(
        g,
        &Update {
            name: "diffuse-adamw-v",
            f: second,
        },
    )?;
    p.inplace_op3(m, v, &Param(c))
}

/// Σ g² of a CPU f32 tensor, accumulated in f64 over chunks (the gradient-clipping norm), or
/// None where the tensor is elsewhere.
pub fn sum_squares(g: &Tensor) -> Result<Option<f64>> {
    if !applies(&[g]) {
        return Ok(None);
    }
    super::with_f32(g, |x| {
        let sq = |c: &[f32]| super::group_norm::sum_sq(c, 0.0) as f64;
        Ok(Some(x.chunks(1024).map(sq).sum()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::rand_tensor;

    #[test]
    fn in_place_step_gives_the_tensor_path_bits() {
        let c = AdamWStep {
            one_minus_beta1: (1.0 - 0.9f64) as f32,
            beta2: 0.999,
            one_minus_beta2: (1.0 - 0.999f64) as f32,
            inv_bias_correction2: (1.0 / (1.0 - 0.999f64.powi(3)).sqrt()) as f32,
            eps: 1e-8,
            decay: (1.0 - 1e-3 * 0.01f64) as f32,
            step_size: (1e-3 / (1.0 - 0.9f64.powi(3))) as f32,
        };
        let (p, g) = (rand_tensor(&[37, 5], 1), rand_tensor(&[37, 5], 2));
        let (m, v) = (
            rand_tensor(&[37, 5], 3),
            rand_tensor(&[37, 5], 4).abs().unwrap(),
        );
        // The tensor path of diffuse_train::optim, operation by operation.
        let m2 = (&m + ((&g - &m).unwrap() * (1.0 - 0.9)).unwrap()).unwrap();
        let v2 = ((&v * 0.999).unwrap() + (g.sqr().unwrap() * (1.0 - 0.999)).unwrap()).unwrap();
        let bc2 = (1.0 - 0.999f64.powi(3)).sqrt();
        let denom = ((v2.sqrt().unwrap() / bc2).unwrap() + 1e-8).unwrap();
        let p2 = ((&p * (1.0 - 1e-3 * 0.01)).unwrap()
            - (m2.div(&denom).unwrap() * (1e-3 / (1.0 - 0.9f64.powi(3)))).unwrap())
        .unwrap();
        let (p1, m1, v1) = (p.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
        assert!(applies(&[&p1, &g, &m1, &v1]));
        step(&p1, &g, &m1, &v1, c).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&m1), bits(&m2));
        assert_eq!(bits(&v1), bits(&v2));
        assert_eq!(bits(&p1), bits(&p2));
    }

    #[test]
    fn in_place_ema_gives_the_tensor_path_bits() {
        let (s, p) = (rand_tensor(&[301], 1), rand_tensor(&[301], 2));
        let d = 0.993f64;
        let want = (&s - ((&s - &p).unwrap() * (1.0 - d)).unwrap()).unwrap();
        let got = s.copy().unwrap();
        ema_step(&got, &p, (1.0 - d) as f32).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn sum_of_squares() {
        let g = rand_tensor(&[1031], 5);
        let want: f64 = g
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&x| x as f64 * x as f64)
            .sum();
        let got = sum_squares(&g).unwrap().unwrap();
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }
}

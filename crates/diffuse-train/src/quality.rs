//! Reconstruction quality of images in [−1, 1] (taken as [0, 1] images): PSNR and SSIM
//! (Wang et al. 2004 with an 11×11 Gaussian window, σ 1.5, valid positions only, K1 0.01,
//! K2 0.03 — the `pytorch_msssim.ssim(data_range=1)` recipe).

use crate::Result;
use candle_core::{DType, Tensor};

/// Mean over images of PSNR (dB) between `a` and `b` [n, c, h, w] in [−1, 1], taken as images
/// in [0, 1] after clamping `a`: 10·log10(1 / MSE).
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = ((a.clamp(-1f32, 1f32)? + 1.0)? * 0.5)?;
    let b = ((b + 1.0)? * 0.5)?;
    let mse: Vec<f32> = (a - b)?.sqr()?.flatten_from(1)?.mean(1)?.to_vec1()?;
    let n = mse.len() as f64;
    Ok(mse
        .iter()
        .map(|&m| 10.0 * (1.0 / (m as f64).max(1e-10)).log10())
        .sum::<f64>()
        / n)
}

/// Mean SSIM over images and channels of `a` and `b` [n, c, h, w] in [−1, 1] (`a` clamped);
/// h and w must be at least 11.
pub fn ssim(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (n, c, h, w) = b.dims4()?;
    if h < 11 || w < 11 {
        return Err(crate::Error::Invalid(format!(
            "SSIM needs images of at least 11×11, got {h}×{w}"
        )));
    }
    let a = ((a.clamp(-1f32, 1f32)? + 1.0)? * 0.5)?.reshape((n * c, 1, h, w))?;
    let b = ((b + 1.0)? * 0.5)?.reshape((n * c, 1, h, w))?;
    let g: Vec<f32> = (0..11)
        .map(|i| (-((i as f32 - 5.0).powi(2)) / (2.0 * 1.5f32.powi(2))).exp())
        .collect();
    let sum: f32 = g.iter().sum();
    let g: Vec<f32> = g.iter().map(|v| v / sum).collect();
    let dev = b.device();
    let gx = Tensor::from_vec(g.clone(), (1, 1, 1, 11), dev)?.to_dtype(DType::F32)?;
    let gy = Tensor::from_vec(g, (1, 1, 11, 1), dev)?.to_dtype(DType::F32)?;
    let blur = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.conv2d(&gx, 0, 1, 1, 1)?.conv2d(&gy, 0, 1, 1, 1)
    };
    let (mx, my) = (blur(&a)?, blur(&b)?);
    let sxx = (blur(&a.sqr()?)? - mx.sqr()?)?;
    let syy = (blur(&b.sqr()?)? - my.sqr()?)?;
    let sxy = (blur(&(&a * &b)?)? - (&mx * &my)?)?;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let num = ((((&mx * &my)? * 2.0)? + c1)? * ((sxy * 2.0)? + c2)?)?;
    let den = (((mx.sqr()? + my.sqr()?)? + c1)? * ((sxx + syy)? + c2)?)?;
    Ok((num / den)?.mean_all()?.to_scalar::<f32>()? as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn psnr_of_known_errors() {
        let dev = Device::Cpu;
        let b = Tensor::zeros((2, 1, 4, 4), DType::F32, &dev).unwrap();
        // image 0 off by 0.2 in [−1, 1] = 0.1 in [0, 1]: MSE 0.01 → 20 dB; image 1 off by 0.02 → 40 dB
        let a = Tensor::cat(
            &[
                (b.narrow(0, 0, 1).unwrap() + 0.2).unwrap(),
                (b.narrow(0, 1, 1).unwrap() - 0.02).unwrap(),
            ],
            0,
        )
        .unwrap();
        let p = psnr(&a, &b).unwrap();
        assert!((p - 30.0).abs() < 1e-4, "{p}");
        // values outside [−1, 1] are clamped first
        let far = (Tensor::ones((1, 1, 2, 2), DType::F32, &dev).unwrap() * 5.0).unwrap();
        let one = Tensor::ones((1, 1, 2, 2), DType::F32, &dev).unwrap();
        assert!(psnr(&far, &one).unwrap() >= 99.0);
    }

    #[test]
    fn ssim_is_one_for_equal_images_and_analytic_for_constants() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 0.5, (2, 3, 16, 16), &dev)
            .unwrap()
            .clamp(-1f32, 1f32)
            .unwrap();
        assert!((ssim(&x, &x).unwrap() - 1.0).abs() < 1e-5);
        let noisy = (&x + Tensor::randn(0f32, 0.3, (2, 3, 16, 16), &dev).unwrap()).unwrap();
        let s = ssim(&noisy, &x).unwrap();
        assert!(s < 0.9 && s > 0.0, "{s}");
        // Constant images u, v in [0, 1]: SSIM = (2uv + C1) / (u² + v² + C1).
        let ca = Tensor::full(0.2f32, (1, 1, 12, 12), &dev).unwrap(); // u = 0.6
        let cb = Tensor::full(-0.4f32, (1, 1, 12, 12), &dev).unwrap(); // v = 0.3
        let (u, v, c1) = (0.6f64, 0.3f64, 1e-4f64);
        let want = (2.0 * u * v + c1) / (u * u + v * v + c1);
        // f32 variances E[x²] − E[x]² cancel to ~1e-7, against C2 = 9e-4: ~1e-4 off.
        let got = ssim(&ca, &cb).unwrap();
        assert!((got - want).abs() < 5e-4, "{got} vs {want}");
        assert!(ssim(
            &Tensor::zeros((1, 1, 8, 8), DType::F32, &dev).unwrap(),
            &Tensor::zeros((1, 1, 8, 8), DType::F32, &dev).unwrap()
        )
        .is_err());
    }
}

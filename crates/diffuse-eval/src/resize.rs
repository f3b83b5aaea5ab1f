//! Resizing to the feature net's input size, as the two references do it:
//! - `Bilinear`: pytorch-fid (`F.interpolate(x, size=(299, 299), mode='bilinear',
//!   align_corners=False)`, torch `UpSampleKernel.cpp`): two taps, no antialiasing.
//! - `Bicubic`: clean-fid's "clean" resize (`PIL.Image.resize(..., Image.BICUBIC)` on a float
//!   channel, Pillow `Resample.c` `precompute_coeffs`): a = −0.5, support widened by the scale
//!   when shrinking (antialiased). clean-fid then clips to [0, 255]; the caller does that.
//!
//! Both are separable: `y = Wh · x · Wwᵀ` with one weight matrix per axis.

use candle_core::{Result, Tensor};

/// Which reference's resize to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    Bilinear,
    Bicubic,
}

impl ResizeMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bilinear" => Some(ResizeMode::Bilinear),
            "bicubic" => Some(ResizeMode::Bicubic),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ResizeMode::Bilinear => "bilinear",
            ResizeMode::Bicubic => "bicubic",
        }
    }
}

/// Row-major `[out, inp]` matrix of interpolation weights along one axis.
pub fn axis_weights(mode: ResizeMode, inp: usize, out: usize) -> Vec<f32> {
    let mut w = vec![0f32; out * inp];
    match mode {
        ResizeMode::Bilinear => {
            // torch: scale = in/out in float; src = max(scale·(dst + ½) − ½, 0).
            let scale = inp as f32 / out as f32;
            for o in 0..out {
                let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                let l1 = src - i0 as f32;
                w[o * inp + i0] += 1.0 - l1;
                w[o * inp + i1] += l1;
            }
        }
        ResizeMode::Bicubic => {
            let scale = inp as f64 / out as f64;
            let filterscale = scale.max(1.0);
            let support = 2.0 * filterscale;
            for o in 0..out {
                let center = (o as f64 + 0.5) * scale;
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(inp as i64) as usize;
                let taps: Vec<f64> = (xmin..xmax)
                    .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                    .collect();
                let total: f64 = taps.iter().sum();
                for (k, t) in taps.iter().enumerate() {
                    let v = if total != 0.0 { t / total } else { 0.0 };
                    w[o * inp + xmin + k] = v as f32;
                }
            }
        }
    }
    w
}

/// Pillow's bicubic kernel (a = −0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Resizes `[b, c, h, w]` f32 to `[b, c, oh, ow]`; the same size returns the input unchanged.
pub fn resize(x: &Tensor, oh: usize, ow: usize, mode: ResizeMode) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let wh = Tensor::from_vec(axis_weights(mode, h, oh), (oh, h), dev)?;
    let wwt = Tensor::from_vec(axis_weights(mode, w, ow), (ow, w), dev)?.t()?;
    // Pillow resizes horizontally first, then vertically; so do we.
    let y = x.broadcast_matmul(&wwt.contiguous()?)?; // [b, c, h, ow]
    wh.broadcast_left(x.dims()[..2].to_vec())?
        .matmul(&y.contiguous()?) // [b, c, oh, ow]
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_sum_to_one_and_identity_is_identity() {
        for mode in [ResizeMode::Bilinear, ResizeMode::Bicubic] {
            for (i, o) in [(28, 299), (299, 28), (16, 16), (5, 3)] {
                let w = axis_weights(mode, i, o);
                for r in 0..o {
                    let s: f32 = w[r * i..(r + 1) * i].iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{mode:?} {i}->{o} row {r}: {s}");
                }
            }
            let w = axis_weights(mode, 7, 7);
            for r in 0..7 {
                for c in 0..7 {
                    let want = if r == c { 1.0 } else { 0.0 };
                    assert!((w[r * 7 + c] - want).abs() < 1e-6, "{mode:?}");
                }
            }
        }
    }

    #[test]
    fn bilinear_doubling_matches_torch_by_hand() {
        // torch: F.interpolate([[0, 1]], size=4, mode='linear') = [0, .25, .75, 1].
        let x = Tensor::new(&[[[[0f32, 1.0]]]], &Device::Cpu).unwrap();
        let y = resize(&x, 1, 4, ResizeMode::Bilinear).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.0, 0.25, 0.75, 1.0]);
    }
}

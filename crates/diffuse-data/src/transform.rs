//! Per-sample preprocessing: fit to a square size (pad, resize or center-crop), optional
//! horizontal flip, u8 HWC → f32 CHW in [−1, 1] (x/127.5 − 1, as diffusers' examples).

use crate::datasets::Sample;
use image::imageops::FilterType;

/// How an image is brought to `size × size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Pad with black around a smaller image (28 → 32 for MNIST); center-crop a larger one.
    Pad,
    /// Resize (bilinear) to the size, ignoring aspect.
    Resize,
    /// Resize the short side to the size, then crop the center (torchvision's
    /// `Resize(size) + CenterCrop(size)`).
    CenterCrop,
}

impl Fit {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pad" => Fit::Pad,
            "resize" => Fit::Resize,
            "center_crop" | "center-crop" => Fit::CenterCrop,
            _ => return None,
        })
    }

    /// The name [`Fit::parse`] reads back.
    pub fn name(self) -> &'static str {
        match self {
            Fit::Pad => "pad",
            Fit::Resize => "resize",
            Fit::CenterCrop => "center_crop",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Transform {
    pub size: usize,
    pub fit: Fit,
    /// Flip horizontally with probability ½ (decided per sample by the loader).
    pub hflip: bool,
}

impl Transform {
    /// The sample as `[c, size, size]` f32 values in [−1, 1].
    pub fn apply(&self, s: &Sample, flip: bool) -> Vec<f32> {
        let c = s.channels;
        let (hwc, w, h) = self.fit_hwc(s);
        let n = self.size;
        debug_assert_eq!((w, h), (n, n));
        let mut out = vec![0f32; c * n * n];
        for y in 0..n {
            for x in 0..n {
                let sx = if flip { n - 1 - x } else { x };
                for ch in 0..c {
                    out[ch * n * n + y * n + x] = hwc[(y * n + sx) * c + ch] as f32 / 127.5 - 1.0;
                }
            }
        }
        out
    }

    /// The sample fitted to `size × size`, still u8 HWC (what a pixel cache stores).
    pub fn fit_u8(&self, s: &Sample) -> Vec<u8> {
        self.fit_hwc(s).0
    }

    fn fit_hwc(&self, s: &Sample) -> (Vec<u8>, usize, usize) {
        let n = self.size;
        if s.width == n && s.height == n {
            return (s.pixels.clone(), n, n);
        }
        match self.fit {
            Fit::Pad if s.width <= n && s.height <= n => {
                let c = s.channels;
                let (ox, oy) = ((n - s.width) / 2, (n - s.height) / 2);
                let mut out = vec![0u8; n * n * c];
                for y in 0..s.height {
                    let src = &s.pixels[y * s.width * c..(y + 1) * s.width * c];
                    let dst = ((y + oy) * n + ox) * c;
                    out[dst..dst + s.width * c].copy_from_slice(src);
                }
                (out, n, n)
            }
            Fit::Resize => resize(s, n, n),
            Fit::Pad | Fit::CenterCrop => {
                // Scale the short side to n (only down/up as needed), then crop the center.
                let scale = n as f64 / s.width.min(s.height) as f64;
                let (w, h) = (
                    ((s.width as f64 * scale).round() as usize).max(n),
                    ((s.height as f64 * scale).round() as usize).max(n),
                );
                let (px, w, h) = if (w, h) == (s.width, s.height) {
                    (s.pixels.clone(), w, h)
                } else {
                    resize(s, w, h)
                };
                let c = s.channels;
                let (ox, oy) = ((w - n) / 2, (h - n) / 2);
                let mut out = Vec::with_capacity(n * n * c);
                for y in 0..n {
                    let row = ((y + oy) * w + ox) * c;
                    out.extend_from_slice(&px[row..row + n * c]);
                }
                (out, n, n)
            }
        }
    }
}

fn resize(s: &Sample, w: usize, h: usize) -> (Vec<u8>, usize, usize) {
    let (sw, sh) = (s.width as u32, s.height as u32);
    let px = if s.channels == 1 {
        let img = image::GrayImage::from_raw(sw, sh, s.pixels.clone()).expect("sized");
        image::imageops::resize(&img, w as u32, h as u32, FilterType::Triangle).into_raw()
    } else if s.channels == 4 {
        let img = image::RgbaImage::from_raw(sw, sh, s.pixels.clone()).expect("sized");
        image::imageops::resize(&img, w as u32, h as u32, FilterType::Triangle).into_raw()
    } else {
        let img = image::RgbImage::from_raw(sw, sh, s.pixels.clone()).expect("sized");
        image::imageops::resize(&img, w as u32, h as u32, FilterType::Triangle).into_raw()
    };
    (px, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(w: usize, h: usize, c: usize) -> Sample {
        Sample {
            pixels: (0..w * h * c).map(|i| (i % 251) as u8).collect(),
            width: w,
            height: h,
            channels: c,
            label: None,
        }
    }

    #[test]
    fn pad_centres_mnist_in_32() {
        let t = Transform {
            size: 32,
            fit: Fit::Pad,
            hflip: false,
        };
        let s = sample(28, 28, 1);
        let out = t.apply(&s, false);
        assert_eq!(out.len(), 32 * 32);
        assert_eq!(out[0], -1.0); // padding is black
        assert_eq!(out[2 * 32 + 2], s.pixels[0] as f32 / 127.5 - 1.0);
    }

    #[test]
    fn flip_mirrors_rows_and_channels_are_planar() {
        let t = Transform {
            size: 2,
            fit: Fit::Resize,
            hflip: true,
        };
        let s = Sample {
            pixels: vec![0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110],
            width: 2,
            height: 2,
            channels: 3,
            label: None,
        };
        let a = t.apply(&s, false);
        let b = t.apply(&s, true);
        // channel 0 of pixel (0,0) is 0; flipped it is pixel (1,0)'s: 30.
        assert_eq!(a[0], -1.0);
        assert_eq!(b[0], 30.0 / 127.5 - 1.0);
        assert_eq!(a[4], 10.0 / 127.5 - 1.0); // channel 1 plane starts at 4
    }

    #[test]
    fn center_crop_takes_the_middle() {
        let t = Transform {
            size: 4,
            fit: Fit::CenterCrop,
            hflip: false,
        };
        let out = t.apply(&sample(8, 4, 1), false);
        assert_eq!(out.len(), 16);
    }
}

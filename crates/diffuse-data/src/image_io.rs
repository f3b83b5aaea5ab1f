//! Images ↔ tensors. Pixels map to [−1, 1] as diffusers pipelines do (x/127.5 − 1), and back
//! with clamping and rounding. Gray images stay one channel; RGBA drops alpha.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, GrayImage, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// Reads an image file as a `[1, c, h, w]` f32 tensor in [−1, 1] (c = 1 gray, 3 colour).
pub fn load_image(path: &Path, device: &Device) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::Decode {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    image_to_tensor(&img, device)
}

/// A decoded image as a `[1, c, h, w]` f32 tensor in [−1, 1].
pub fn image_to_tensor(img: &DynamicImage, device: &Device) -> Result<Tensor> {
    let gray = matches!(
        img,
        DynamicImage::ImageLuma8(_)
            | DynamicImage::ImageLumaA8(_)
            | DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
    );
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, raw) = if gray {
        (1, img.to_luma8().into_raw())
    } else {
        (3, img.to_rgb8().into_raw())
    };
    // [h, w, c] u8 → [1, c, h, w] f32
    let t = Tensor::from_vec(raw, (h, w, c), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    Ok(((t / 127.5)? - 1.0)?.unsqueeze(0)?)
}

/// `[b, c, h, w]` in [−1, 1] → b images (c = 1 gray, c = 3 RGB).
pub fn tensor_to_images(t: &Tensor) -> Result<Vec<DynamicImage>> {
    let (b, c, h, w) = t.dims4()?;
    if c != 1 && c != 3 {
        return Err(Error::Invalid(format!(
            "cannot make an image of {c} channels (1 or 3)"
        )));
    }
    // [b, c, h, w] → [b, h, w, c] u8
    let u8s = ((t.to_dtype(DType::F32)?.clamp(-1.0, 1.0)? + 1.0)? * 127.5)?
        .round()?
        .permute((0, 2, 3, 1))?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let per = h * w * c;
    Ok((0..b)
        .map(|i| {
            let data = u8s[i * per..(i + 1) * per].to_vec();
            if c == 1 {
                DynamicImage::ImageLuma8(
                    GrayImage::from_raw(w as u32, h as u32, data).expect("sized"),
                )
            } else {
                DynamicImage::ImageRgb8(
                    RgbImage::from_raw(w as u32, h as u32, data).expect("sized"),
                )
            }
        })
        .collect())
}

/// Lays `[n, c, h, w]` out as a grid of `cols` columns with `pad` pixels of `pad_value`
/// between tiles: `[1, c, H, W]`.
pub fn grid(images: &Tensor, cols: usize, pad: usize, pad_value: f64) -> Result<Tensor> {
    let (n, c, h, w) = images.dims4()?;
    if n == 0 || cols == 0 {
        return Err(Error::Invalid(
            "a grid needs at least one image and one column".into(),
        ));
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let gh = rows * h + (rows - 1) * pad;
    let gw = cols * w + (cols - 1) * pad;
    let dev = images.device();
    let mut canvas = (Tensor::ones((c, gh, gw), DType::F32, dev)? * pad_value)?;
    let images = images.to_dtype(DType::F32)?;
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        let (y, x) = (r * (h + pad), col * (w + pad));
        canvas = canvas.slice_assign(&[0..c, y..y + h, x..x + w], &images.get(i)?)?;
    }
    Ok(canvas.unsqueeze(0)?)
}

/// Encodes one image of a `[1, c, h, w]` tensor as PNG and writes it atomically.
pub fn save_png(t: &Tensor, path: &Path) -> Result<()> {
    let img = tensor_to_images(t)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid("no image to save".into()))?;
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    crate::fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_gray_and_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        for c in [1usize, 3] {
            let vals: Vec<f32> = (0..c * 4 * 5)
                .map(|i| (i % 256) as f32 / 127.5 - 1.0)
                .collect();
            let t = Tensor::from_vec(vals.clone(), (1, c, 4, 5), &dev).unwrap();
            let p = dir.path().join(format!("x{c}.png"));
            save_png(&t, &p).unwrap();
            let back = load_image(&p, &dev).unwrap();
            assert_eq!(back.dims(), &[1, c, 4, 5]);
            let b: Vec<f32> = back.flatten_all().unwrap().to_vec1().unwrap();
            for (x, y) in vals.iter().zip(&b) {
                assert!((x - y).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn grid_places_tiles() {
        let dev = Device::Cpu;
        let t = Tensor::stack(
            &[
                Tensor::full(-1f32, (1, 2, 2), &dev).unwrap(),
                Tensor::full(1f32, (1, 2, 2), &dev).unwrap(),
            ],
            0,
        )
        .unwrap();
        let g = grid(&t, 2, 1, 0.0).unwrap();
        assert_eq!(g.dims(), &[1, 1, 2, 5]);
        let row: Vec<f32> = g
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(row, vec![-1.0, -1.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn not_an_image_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.png");
        std::fs::write(&p, b"definitely not a png").unwrap();
        let e = load_image(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("cannot decode"), "{e}");
        let e = load_image(&dir.path().join("missing.png"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.png"), "{e}");
    }
}

//! Images ↔ tensors. Pixels map to [−1, 1] as diffusers pipelines do (x/127.5 − 1), and back
//! with clamping and rounding. Files decode as users expect (PNG 8/16-bit, JPEG, WebP, gray with
//! alpha), upright by their EXIF orientation, with alpha composited onto a [`Background`] or
//! kept as a 4th channel.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, GrayImage, ImageDecoder, RgbImage, RgbaImage};
use std::io::Cursor;
use std::path::Path;

/// What transparent pixels become: composited onto a colour, or kept as a 4th channel
/// (`data.background` in a training config: the names of [`Background::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Background {
    Color([u8; 3]),
    /// RGBA: the alpha channel is kept (4 channels).
    Alpha,
}

impl Default for Background {
    fn default() -> Self {
        Background::Color([255; 3])
    }
}

impl Background {
    /// `white`, `black`, `gray`, `#rrggbb`, or `alpha` (keep it as a 4th channel).
    pub fn parse(s: &str) -> Result<Self> {
        let hex = |h: &str| u8::from_str_radix(h, 16).ok();
        Ok(match s {
            "white" => Background::Color([255; 3]),
            "black" => Background::Color([0; 3]),
            "gray" | "grey" => Background::Color([128; 3]),
            "alpha" => Background::Alpha,
            _ => match s.strip_prefix('#').filter(|h| h.len() == 6 && h.is_ascii()) {
                Some(h) => match (hex(&h[0..2]), hex(&h[2..4]), hex(&h[4..6])) {
                    (Some(r), Some(g), Some(b)) => Background::Color([r, g, b]),
                    _ => return Err(bad_background(s)),
                },
                None => return Err(bad_background(s)),
            },
        })
    }

    /// The name [`Background::parse`] reads back.
    pub fn name(&self) -> String {
        match self {
            Background::Alpha => "alpha".into(),
            Background::Color([255, 255, 255]) => "white".into(),
            Background::Color([0, 0, 0]) => "black".into(),
            Background::Color([r, g, b]) => format!("#{r:02x}{g:02x}{b:02x}"),
        }
    }
}

impl TryFrom<String> for Background {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Background::parse(&s)
    }
}

impl From<Background> for String {
    fn from(b: Background) -> String {
        b.name()
    }
}

fn bad_background(s: &str) -> Error {
    Error::Invalid(format!(
        "background {s:?}: use white, black, gray, #rrggbb, or alpha (keep a 4th channel)"
    ))
}

/// The most bytes one decoded image may take (about 44 megapixels of 8-bit RGB).
pub const MAX_DECODED_BYTES: u64 = 128 << 20;

/// Decodes image file bytes (format from the content), applying the EXIF orientation; an image
/// over [`MAX_DECODED_BYTES`] decoded is refused before decoding.
pub fn decode(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    decode_within(bytes, path, u32::MAX)
}

/// [`decode`], refusing an image wider or taller than `max_side` pixels from its header
/// ([`Error::TooLarge`]) before anything is decoded (an upload to `serve`).
pub fn decode_within(bytes: &[u8], path: &Path, max_side: u32) -> Result<DynamicImage> {
    // One line: some decoders end their messages with a newline.
    let err = |e: &dyn std::fmt::Display| Error::Decode {
        path: path.display().to_string(),
        message: e.to_string().trim().replace('\n', " "),
    };
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(&e))?;
    let mut decoder = reader.into_decoder().map_err(|e| err(&e))?;
    let (w, h) = decoder.dimensions();
    if w.max(h) > max_side {
        return Err(Error::TooLarge {
            path: path.display().to_string(),
            width: w,
            height: h,
            max_side,
        });
    }
    // `into_decoder` leaves the decoder unlimited: a header may claim a 77 GB image (found by
    // fuzzing). `set_limits` checks only the dimensions, `reserve` the bytes the decoded image
    // takes. 512 MiB, the image crate's default, still let a JPEG claiming 57,601 × 2,310 pixels
    // take 2.1 GB with the decoder's own buffers (also found by fuzzing): the cap is 128 MiB
    // decoded, about 44 megapixels of RGB, far above any training size.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits.reserve(decoder.total_bytes()).map_err(|e| err(&e))?;
    decoder.set_limits(limits).map_err(|e| err(&e))?;
    let orientation = decoder.orientation().map_err(|e| err(&e))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(&e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Reads and decodes an image file ([`decode`]).
pub fn open(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode(&bytes, path)
}

/// The channels an image becomes: 4 when alpha is kept, else 1 for gray, 3 for colour.
pub fn channels_of(img: &DynamicImage, bg: Background) -> usize {
    match bg {
        Background::Alpha => 4,
        Background::Color(_) if img.color().has_color() => 3,
        Background::Color(c) if c[0] != c[1] || c[1] != c[2] => 3,
        Background::Color(_) => 1,
    }
}

/// The image's pixels as HWC u8 with `channels` channels (1, 3 or 4), alpha composited onto
/// `bg` unless kept.
pub fn pixels(img: &DynamicImage, channels: usize, bg: Background) -> Vec<u8> {
    if channels == 4 {
        return img.to_rgba8().into_raw();
    }
    let color = match bg {
        Background::Color(c) => c,
        Background::Alpha => [255; 3],
    };
    let rgb: RgbImage = if img.color().has_alpha() {
        let rgba: RgbaImage = img.to_rgba8();
        let (w, h) = rgba.dimensions();
        let mut out = RgbImage::new(w, h);
        for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
            let a = p[3] as u32;
            for c in 0..3 {
                o[c] = ((p[c] as u32 * a + color[c] as u32 * (255 - a) + 127) / 255) as u8;
            }
        }
        out
    } else {
        img.to_rgb8()
    };
    match channels {
        1 => DynamicImage::ImageRgb8(rgb).to_luma8().into_raw(),
        _ => rgb.into_raw(),
    }
}

/// Reads an image file as a `[1, c, h, w]` f32 tensor in [−1, 1] (c = 1 gray, 3 colour;
/// transparent pixels on white).
pub fn load_image(path: &Path, device: &Device) -> Result<Tensor> {
    image_to_tensor(&open(path)?, device)
}

/// A decoded image as a `[1, c, h, w]` f32 tensor in [−1, 1] (alpha composited on white).
pub fn image_to_tensor(img: &DynamicImage, device: &Device) -> Result<Tensor> {
    let bg = Background::default();
    let c = channels_of(img, bg);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = pixels(img, c, bg);
    // [h, w, c] u8 → [1, c, h, w] f32
    let t = Tensor::from_vec(raw, (h, w, c), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    Ok(((t / 127.5)? - 1.0)?.unsqueeze(0)?)
}

/// An image file as a model of `channels` channels at `size × size` takes it: `[1, c, s, s]`
/// f32 in [−1, 1], its channels converted (alpha onto white) and fitted as `data` does. The
/// second value says what was changed, for the caller to tell the user (empty: nothing).
pub fn load_fitted(
    path: &Path,
    channels: usize,
    size: usize,
    fit: crate::transform::Fit,
    device: &Device,
) -> Result<(Tensor, Vec<String>)> {
    fit_image(&open(path)?, channels, size, fit, device)
}

/// [`load_fitted`] for an image already decoded.
pub fn fit_image(
    img: &DynamicImage,
    channels: usize,
    size: usize,
    fit: crate::transform::Fit,
    device: &Device,
) -> Result<(Tensor, Vec<String>)> {
    let bg = Background::default();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut notes = Vec::new();
    let had = channels_of(img, bg);
    if !(1..=4).contains(&channels) {
        return Err(Error::Invalid(format!("a model of {channels} channels")));
    }
    if had != channels {
        notes.push(format!("{had} → {channels} channels"));
    }
    if (w, h) != (size, size) {
        notes.push(format!("{w}×{h} → {size}×{size} ({})", fit.name()));
    }
    let sample = crate::datasets::Sample {
        pixels: pixels(img, channels, bg),
        width: w,
        height: h,
        channels,
        label: None,
    };
    let t = crate::transform::Transform {
        size,
        fit,
        hflip: false,
    };
    let chw = Tensor::from_vec(t.apply(&sample, false), (1, channels, size, size), device)?;
    Ok((chw, notes))
}

/// A mask image as `[1, 1, s, s]` of 0 and 1: white (≥ ½ gray after fitting as
/// [`load_fitted`]) is 1, regenerate; black is 0, keep (diffusers' inpainting convention).
pub fn load_mask(
    path: &Path,
    size: usize,
    fit: crate::transform::Fit,
    device: &Device,
) -> Result<(Tensor, Vec<String>)> {
    mask_of(&open(path)?, size, fit, device)
}

/// [`load_mask`] for an image already decoded.
pub fn mask_of(
    img: &DynamicImage,
    size: usize,
    fit: crate::transform::Fit,
    device: &Device,
) -> Result<(Tensor, Vec<String>)> {
    let (gray, notes) = fit_image(img, 1, size, fit, device)?;
    Ok((gray.ge(0.0)?.to_dtype(DType::F32)?, notes))
}

/// `[b, c, h, w]` in [−1, 1] → b images (c = 1 gray, c = 3 RGB).
pub fn tensor_to_images(t: &Tensor) -> Result<Vec<DynamicImage>> {
    let (b, c, h, w) = t.dims4()?;
    if !matches!(c, 1 | 3 | 4) {
        return Err(Error::Invalid(format!(
            "cannot make an image of {c} channels (1, 3 or 4)"
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
            } else if c == 4 {
                DynamicImage::ImageRgba8(
                    RgbaImage::from_raw(w as u32, h as u32, data).expect("sized"),
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

/// `[n, c, h, w]` as an animated GIF that plays the frames forth and back, looping, each
/// shown `delay_ms`; written atomically.
pub fn save_gif(frames: &Tensor, path: &Path, delay_ms: u32) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let images = tensor_to_images(frames)?;
    let back = images
        .iter()
        .rev()
        .skip(1)
        .take(images.len().saturating_sub(2));
    let order: Vec<&DynamicImage> = images.iter().chain(back).collect();
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut bytes, 10);
        let gif_err = |e: image::ImageError| Error::Invalid(format!("{}: {e}", path.display()));
        enc.set_repeat(Repeat::Infinite).map_err(gif_err)?;
        for img in order {
            let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
            enc.encode_frame(image::Frame::from_parts(img.to_rgba8(), 0, 0, delay))
                .map_err(gif_err)?;
        }
    }
    crate::fs::write_atomic(path, &bytes)
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
    fn files_are_fitted_to_the_model_and_say_what_changed_and_masks_are_binary() {
        use crate::transform::Fit;
        let dir = tempfile::tempdir().unwrap();
        let (img, mask) = (dir.path().join("rgb.png"), dir.path().join("mask.png"));
        image::RgbImage::from_fn(8, 4, |x, _| image::Rgb([x as u8 * 30, 0, 255]))
            .save(&img)
            .unwrap();
        let (t, notes) = load_fitted(&img, 1, 4, Fit::CenterCrop, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [1, 1, 4, 4]);
        assert_eq!(notes, ["3 → 1 channels", "8×4 → 4×4 (center_crop)"]);
        let (_, notes) = load_fitted(&img, 3, 4, Fit::Resize, &Device::Cpu).unwrap();
        assert_eq!(notes, ["8×4 → 4×4 (resize)"]);
        image::GrayImage::from_fn(4, 4, |x, _| image::Luma([[0, 100, 130, 255][x as usize]]))
            .save(&mask)
            .unwrap();
        let (m, notes) = load_mask(&mask, 4, Fit::Pad, &Device::Cpu).unwrap();
        assert!(notes.is_empty());
        let row = m.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..4].to_vec();
        assert_eq!(row, [0.0, 0.0, 1.0, 1.0]);
        let e = load_mask(&dir.path().join("none.png"), 4, Fit::Pad, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.png"), "{e}");
    }

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

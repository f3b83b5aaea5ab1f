//! Writes the seed corpus `fuzz/corpus/TARGET/` (all but `pickle`, which PyTorch writes: see
//! fuzz/README.md): small valid inputs of each format, so mutations start inside the parser.
//! `cargo run --release -p diffuse-fuzz --example write_seeds`

use candle_core::{DType, Device};
use std::io::Write;
use std::path::{Path, PathBuf};

fn put(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() {
    // safetensors: the tiny UNet's weights, f32 and f16.
    let cfg = diffuse_models::config::UNet2DConfig::from_json_str(diffuse_fuzz::targets::TINY_UNET)
        .unwrap();
    let (_, varmap) = diffuse_models::weights::build_unet(&cfg, &Device::Cpu).unwrap();
    let tmp = std::env::temp_dir().join("diffuse-fuzz-seeds");
    for (name, dtype) in [("f32", DType::F32), ("f16", DType::F16)] {
        diffuse_models::weights::save_unet(&cfg, &varmap, &tmp, dtype).unwrap();
        let w = std::fs::read(tmp.join("diffusion_pytorch_model.safetensors")).unwrap();
        put("safetensors", &format!("tiny_unet_{name}.safetensors"), &w);
    }

    // config JSON: scheduler configs as diffusers saves them, and the model configs.
    let saved = std::fs::read_to_string(
        root().join("crates/diffuse-core/tests/fixtures/saved_configs.json"),
    )
    .unwrap();
    let saved: serde_json::Value = diffuse_core::pyjson::parse(&saved).unwrap();
    for c in saved["configs"].as_array().unwrap() {
        let class = c["class"].as_str().unwrap();
        put(
            "config_json",
            &format!("{class}.json"),
            c["text"].as_str().unwrap().as_bytes(),
        );
    }
    let models = root().join("crates/diffuse-models/tests/fixtures");
    for m in [
        "unet_class_cond",
        "dit_p2_rgb",
        "vae_gray_plain",
        "unet_fourier_scaleshift",
    ] {
        let text = std::fs::read(models.join(m).join("config.json")).unwrap();
        put("config_json", &format!("{m}.json"), &text);
    }

    // The TOML configs users start from.
    for e in std::fs::read_dir(root().join("examples"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "toml") {
            put(
                "train_toml",
                &e.file_name().to_string_lossy(),
                &std::fs::read(e.path()).unwrap(),
            );
        }
    }

    // Images: gray and RGB PNG, RGB JPEG, 6×5.
    let gray = image::GrayImage::from_fn(6, 5, |x, y| image::Luma([(x * 40 + y * 9) as u8]));
    let rgb =
        image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([(x * 40) as u8, (y * 50) as u8, 7]));
    for (name, img, fmt) in [
        (
            "gray.png",
            image::DynamicImage::ImageLuma8(gray),
            image::ImageFormat::Png,
        ),
        (
            "rgb.png",
            image::DynamicImage::ImageRgb8(rgb.clone()),
            image::ImageFormat::Png,
        ),
        (
            "rgb.jpg",
            image::DynamicImage::ImageRgb8(rgb),
            image::ImageFormat::Jpeg,
        ),
    ] {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        put("image", name, buf.get_ref());
    }

    // IDX: 2 images of 3×4 and their labels, raw and gzip; the first two bytes give the
    // length of the images file (see targets::idx).
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
    images.extend((0..24).map(|i| i * 10));
    let labels = [0u8, 0, 8, 1, 0, 0, 0, 2, 7, 3];
    let pair = |a: &[u8], b: &[u8]| {
        let mut v = (a.len() as u16).to_le_bytes().to_vec();
        v.extend(a);
        v.extend(b);
        v
    };
    put("idx", "raw", &pair(&images, &labels));
    let gz = |d: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    };
    put("idx", "gzip", &pair(&gz(&images), &gz(&labels)));

    // CIFAR-10: two records.
    let mut rec = Vec::new();
    for label in [3u8, 9] {
        rec.push(label);
        rec.extend((0..3072).map(|i| (i % 251) as u8));
    }
    put("cifar", "two_records.bin", &rec);

    // ONNX round trip: the bytes choose a config.
    for (i, s) in [
        [0u8; 20],
        [1; 20],
        [2; 20],
        [7, 2, 1, 0, 1, 0, 1, 0, 3, 2, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0],
    ]
    .iter()
    .enumerate()
    {
        put("onnx_roundtrip", &format!("config{i}"), s);
    }

    // Request bodies.
    for (i, b) in [
        r#"{"n": 4, "class_label": 7, "guidance_scale": 3, "steps": 25, "seed": 1}"#,
        r#"{"model": "mnist", "class_label": 3, "steps": 50, "stream": true}"#,
        r#"{"n": 1, "sampler": "dpmpp_2m", "response_format": "url", "size": 32, "eta": 0.5}"#,
    ]
    .iter()
    .enumerate()
    {
        put("serve_body", &format!("body{i}.json"), b.as_bytes());
    }

    // Edit forms: a gray and an RGBA PNG, a mask, text fields.
    let png = |img: image::DynamicImage| {
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let gray =
        png(image::GrayImage::from_fn(12, 12, |x, y| image::Luma([(x * 20 + y) as u8])).into());
    let rgba = png(image::RgbaImage::from_fn(20, 10, |x, y| {
        image::Rgba([x as u8 * 9, y as u8 * 20, 90, 200])
    })
    .into());
    let mask =
        png(
            image::GrayImage::from_fn(12, 12, |x, _| image::Luma([if x > 5 { 255 } else { 0 }]))
                .into(),
        );
    let b = diffuse_fuzz::targets::FORM_BOUNDARY;
    let form = |text: &[(&str, &str)], files: &[(&str, &[u8])]| {
        let mut body = Vec::new();
        for (k, v) in text {
            body.extend(
                format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                    .bytes(),
            );
        }
        for (k, v) in files {
            body.extend(format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{k}.png\"\r\nContent-Type: image/png\r\n\r\n").bytes());
            body.extend(*v);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{b}--\r\n").bytes());
        body
    };
    put(
        "serve_form",
        "img2img",
        &form(
            &[("n", "2"), ("strength", "0.6"), ("class_label", "3")],
            &[("image", &gray)],
        ),
    );
    put(
        "serve_form",
        "inpaint",
        &form(
            &[("seed", "5"), ("sampler", "ddim")],
            &[("image", &gray), ("mask", &mask)],
        ),
    );
    put(
        "serve_form",
        "rgba",
        &form(&[("steps", "20"), ("stream", "true")], &[("image", &rgba)]),
    );
    println!("wrote fuzz/corpus");
}

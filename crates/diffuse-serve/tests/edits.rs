//! `POST /v1/images/edits` and `/v1/images/variations`: the same images as the library's edit
//! (img2img and blend inpainting), batched with generations, and every bad form a 400/413 that
//! names its field.

mod common;
use common::*;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use candle_core::{Device, Tensor};
use diffuse_models::pipeline::{generate, Edit, GenerateOptions, Inpaint};
use diffuse_serve::{app, ServeConfig};
use serde_json::Value;
use std::time::Duration;

/// A multipart form of text fields and PNG files.
fn form(uri: &str, text: &[(&str, &str)], files: &[(&str, Vec<u8>)]) -> Request<Body> {
    let b = "diffuse-test-boundary";
    let mut body = Vec::new();
    for (name, value) in text {
        body.extend(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .bytes(),
        );
    }
    for (name, data) in files {
        body.extend(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n")
                .bytes(),
        );
        body.extend(data);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{b}--\r\n").bytes());
    Request::post(uri)
        .header("content-type", format!("multipart/form-data; boundary={b}"))
        .body(Body::from(body))
        .unwrap()
}

fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// An 8×8 gray test picture (a bright diagonal band) and a mask of its right half.
fn picture() -> (image::GrayImage, image::GrayImage) {
    let img = image::GrayImage::from_fn(8, 8, |x, y| {
        image::Luma([if x.abs_diff(y) <= 1 {
            230
        } else {
            20 + 8 * x as u8
        }])
    });
    let mask = image::GrayImage::from_fn(8, 8, |x, _| image::Luma([if x >= 4 { 255 } else { 0 }]));
    (img, mask)
}

fn to_tensor(img: &image::GrayImage) -> Tensor {
    let v: Vec<f32> = img.pixels().map(|p| p[0] as f32 / 127.5 - 1.0).collect();
    Tensor::from_vec(v, (1, 1, 8, 8), &Device::Cpu).unwrap()
}

fn images_of(r: &Value) -> Vec<image::GrayImage> {
    r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| decode_png(d["b64_json"].as_str().unwrap()).to_luma8())
        .collect()
}

/// The largest difference in levels between an image and a tensor row in [−1, 1].
fn max_diff(img: &image::GrayImage, t: &Tensor) -> f32 {
    let w: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    img.pixels()
        .zip(&w)
        .map(|(p, &x)| (p[0] as f32 - ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)).abs())
        .fold(0f32, f32::max)
}

/// What the library's pipeline gives for the same edit, seed, class and sampler.
fn library(sampler: &str, steps: usize, edit: Edit, n: usize, seed: u64, label: u32) -> Tensor {
    use diffuse_models::pipeline::{LoadOptions, Pipeline};
    let dir = fixtures().join("unet_class_cond");
    let pipe = Pipeline::load(&dir, &LoadOptions::default(), &Device::Cpu).unwrap();
    let cfg = diffuse_core::compat::resolve_sampler(sampler, &pipe.model_scheduler).unwrap();
    let sampler = diffuse_core::sampler::Sampler::new(&cfg, steps).unwrap();
    let opts = GenerateOptions {
        num_images: n,
        seed,
        size: (8, 8),
        class_labels: Some(vec![label]),
        edit: Some(edit),
        ..Default::default()
    };
    generate(&pipe.net, &sampler, &opts, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap()
}

#[tokio::test]
async fn edits_are_the_library_edits_and_batch_with_generations() {
    let app = app(state(ServeConfig {
        max_wait: Duration::from_millis(300),
        ..Default::default()
    }));
    let (img, mask) = picture();
    let (img_png, mask_png) = (png(img.clone().into()), png(mask.clone().into()));
    // Image-to-image at strength 0.5 of 8 DDIM steps runs 4 calls: it shares a batch with a
    // 4-step generation.
    let edit = form(
        "/v1/images/edits",
        &[
            ("model", "unet_class_cond"),
            ("class_label", "3"),
            ("n", "2"),
            ("steps", "8"),
            ("strength", "0.5"),
            ("seed", "7"),
            ("sampler", "ddim"),
        ],
        &[("image", img_png.clone())],
    );
    let gen = post(
        serde_json::json!({"model": "unet_class_cond", "class_label": 1, "steps": 4, "seed": 1, "sampler": "euler"}),
    );
    let ((s1, _, b1), (s2, _, b2)) = tokio::join!(call(&app, edit), call(&app, gen));
    assert_eq!(
        (s1, s2),
        (StatusCode::OK, StatusCode::OK),
        "{}",
        String::from_utf8_lossy(&b1)
    );
    let r = json_of(&b1);
    assert_eq!(
        r["timings"]["batch_images"], 3,
        "the edit and the generation shared a batch: {r}"
    );
    assert_eq!(json_of(&b2)["timings"]["batch_images"], 3);
    let want = library(
        "ddim",
        8,
        Edit {
            images: to_tensor(&img),
            mask: None,
            strength: 0.5,
            inpaint: Inpaint::Blend,
        },
        2,
        7,
        3,
    );
    for (i, got) in images_of(&r).iter().enumerate() {
        let d = max_diff(got, &want.get(i).unwrap());
        assert!(
            d <= 1.0,
            "img2img image {i} differs from the library's by {d} levels"
        );
    }

    // Inpainting the right half (euler: the last level is σ = 0, so the kept half is exact).
    let req = form(
        "/v1/images/edits",
        &[
            ("model", "unet_class_cond"),
            ("class_label", "5"),
            ("steps", "6"),
            ("seed", "3"),
            ("sampler", "euler"),
        ],
        &[("image", img_png.clone()), ("mask", mask_png)],
    );
    let (s, _, b) = call(&app, req).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let got = &images_of(&json_of(&b))[0];
    let want = library(
        "euler",
        6,
        Edit {
            images: to_tensor(&img),
            mask: Some(
                to_tensor(&mask)
                    .ge(0.0)
                    .unwrap()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap(),
            ),
            strength: 1.0,
            inpaint: Inpaint::Blend,
        },
        1,
        3,
        5,
    );
    let d = max_diff(got, &want.get(0).unwrap());
    assert!(
        d <= 1.0,
        "inpainting differs from the library's by {d} levels"
    );
    for (x, y, p) in got.enumerate_pixels() {
        if x < 4 {
            let q = img.get_pixel(x, y)[0];
            assert!(
                p[0].abs_diff(q) <= 1,
                "kept pixel ({x}, {y}) changed: {} → {}",
                q,
                p[0]
            );
        }
    }

    // Strength 0 gives the image back.
    let req = form(
        "/v1/images/edits",
        &[
            ("model", "unet_class_cond"),
            ("strength", "0"),
            ("steps", "5"),
        ],
        &[("image", img_png)],
    );
    let (s, _, b) = call(&app, req).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        images_of(&json_of(&b))[0],
        img,
        "strength 0 returns the input"
    );
}

#[tokio::test]
async fn variations_differ_by_seed_and_repeat_with_it() {
    let app = app(state(ServeConfig::default()));
    let (img, _) = picture();
    let req = || {
        form(
            "/v1/images/variations",
            &[
                ("model", "unet_class_cond"),
                ("n", "3"),
                ("steps", "6"),
                ("strength", "0.7"),
                ("seed", "21"),
            ],
            &[("image", png(img.clone().into()))],
        )
    };
    let (s, _, b) = call(&app, req()).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let first = images_of(&json_of(&b));
    assert_eq!(first.len(), 3);
    assert!(
        first[0] != first[1] && first[1] != first[2],
        "the variations differ"
    );
    let (_, _, b) = call(&app, req()).await;
    assert_eq!(
        images_of(&json_of(&b)),
        first,
        "the same seed gives the same variations"
    );
}

#[tokio::test]
async fn bad_forms_are_400_or_413_naming_the_field() {
    let app = app(state(ServeConfig {
        max_size: 64,
        max_upload_bytes: 20_000,
        ..Default::default()
    }));
    let bad = StatusCode::BAD_REQUEST;
    let (img, mask) = picture();
    let m = ("model", "unet_class_cond");
    let ok = || ("image", png(img.clone().into()));
    let edits = "/v1/images/edits";
    // An image over --max-size on a side.
    let big = png(image::GrayImage::new(65, 10).into());
    let e = expect_error(
        &app,
        form(edits, &[m], &[("image", big)]),
        bad,
        Some("image"),
    )
    .await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("65×10"),
        "{e}"
    );
    // A mask of another size than the image.
    let small = png(image::GrayImage::new(4, 4).into());
    let e = expect_error(
        &app,
        form(edits, &[m], &[ok(), ("mask", small)]),
        bad,
        Some("mask"),
    )
    .await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("4×4"),
        "{e}"
    );
    // Not an image.
    expect_error(
        &app,
        form(edits, &[m], &[("image", b"not a png".to_vec())]),
        bad,
        Some("image"),
    )
    .await;
    // No image; a mask sent to variations; an unknown field; a bad strength.
    expect_error(&app, form(edits, &[m, ("n", "2")], &[]), bad, Some("image")).await;
    expect_error(
        &app,
        form(
            "/v1/images/variations",
            &[m],
            &[ok(), ("mask", png(mask.into()))],
        ),
        bad,
        Some("mask"),
    )
    .await;
    expect_error(
        &app,
        form(edits, &[m, ("prompt", "a cat")], &[ok()]),
        bad,
        Some("prompt"),
    )
    .await;
    expect_error(
        &app,
        form(edits, &[m, ("strength", "2")], &[ok()]),
        bad,
        Some("strength"),
    )
    .await;
    // Guidance needs a class to pull towards.
    expect_error(
        &app,
        form(edits, &[m, ("guidance_scale", "3")], &[ok()]),
        bad,
        Some("guidance_scale"),
    )
    .await;
    // JSON is not a form.
    let json = Request::post(edits)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    expect_error(&app, json, bad, Some("body")).await;
    // Over --max-upload-bytes.
    let noise: Vec<u8> = (0..30_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let e = expect_error(
        &app,
        form(edits, &[m], &[("image", noise)]),
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("body"),
    )
    .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-upload-bytes"),
        "{e}"
    );
}

#[tokio::test]
async fn a_latent_pipeline_edits_in_latent_space() {
    use diffuse_models::pipeline::{decode_latents, LoadOptions, Pipeline};
    let tmp = tempfile::tempdir().unwrap();
    let (app, dir, _) = latent_app(tmp.path());
    // A 16×16 picture and its lower half masked: 4×4 latents, the mask shrunk to them.
    let img = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 13 + y * 3) as u8]));
    let mask =
        image::GrayImage::from_fn(16, 16, |_, y| image::Luma([if y >= 8 { 255 } else { 0 }]));
    let req = form(
        "/v1/images/edits",
        &[
            ("class_label", "7"),
            ("steps", "6"),
            ("strength", "0.6"),
            ("seed", "9"),
            ("sampler", "ddim"),
            ("size", "16"),
        ],
        &[
            ("image", png(img.clone().into())),
            ("mask", png(mask.clone().into())),
        ],
    );
    let (st, _, b) = call(&app, req).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let got = &images_of(&json_of(&b))[0];
    assert_eq!(got.dimensions(), (16, 16));
    let pipe = Pipeline::load(&dir, &LoadOptions::default(), &Device::Cpu).unwrap();
    let px = |g: &image::GrayImage| {
        let v: Vec<f32> = g.pixels().map(|p| p[0] as f32 / 127.5 - 1.0).collect();
        Tensor::from_vec(v, (1, 1, 16, 16), &Device::Cpu).unwrap()
    };
    let m = px(&mask)
        .ge(0.0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let (images, mask) = pipe.to_denoising_space(&px(&img), Some(&m)).unwrap();
    assert_eq!(mask.as_ref().unwrap().dims(), [1, 1, 4, 4]);
    let cfg = diffuse_core::compat::resolve_sampler("ddim", &pipe.model_scheduler).unwrap();
    let sampler = diffuse_core::sampler::Sampler::new(&cfg, 6).unwrap();
    let opts = GenerateOptions {
        seed: 9,
        size: (4, 4),
        class_labels: Some(vec![7]),
        edit: Some(Edit {
            images,
            mask,
            strength: 0.6,
            inpaint: Inpaint::Blend,
        }),
        ..Default::default()
    };
    let z = generate(&pipe.net, &sampler, &opts, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let want = decode_latents(pipe.vae.as_ref().unwrap(), &z, 0).unwrap();
    let d = max_diff(got, &want.get(0).unwrap());
    assert!(
        d <= 1.0,
        "the latent edit differs from the library's by {d} levels"
    );
}

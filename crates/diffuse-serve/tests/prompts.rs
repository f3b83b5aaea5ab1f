//! Text-to-image serving: prompts and negative prompts on a tiny random StableDiffusionPipeline,
//! checked against the library's pipeline, batched across requests, and refused where they do
//! not belong.

mod common;
use common::*;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use candle_core::{Device, Tensor};
use diffuse_models::pipeline::{GenerateOptions, LoadOptions, Pipeline};
use diffuse_serve::batcher::{
    Admission, BatchConfig, Batcher, Job, JobError, JobPrompt, JobResult,
};
use diffuse_serve::{app, metrics::Metrics, AppState, ServeConfig};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The text pipeline beside the class-conditional and unconditional fixtures.
fn text_app(root: &Path, config: ServeConfig) -> Router {
    let mut s = AppState::new(config, Arc::new(Metrics::default()));
    s.add_model(&text_pipeline(root), &Device::Cpu).unwrap();
    s.add_model(&fixtures().join("pipeline_basic"), &Device::Cpu)
        .unwrap();
    s.add_model(&fixtures().join("unet_class_cond"), &Device::Cpu)
        .unwrap();
    app(Arc::new(s))
}

fn load(dir: &Path) -> Pipeline {
    Pipeline::load(dir, &LoadOptions::default(), &Device::Cpu).unwrap()
}

/// The library's images for `n` images of `prompt` with DDIM in `steps` steps, the prompt
/// embeddings `clip_skip` layers early.
#[allow(clippy::too_many_arguments)]
fn library(
    pipe: &Pipeline,
    prompt: &str,
    negative: Option<&str>,
    guidance_scale: f64,
    n: usize,
    seed: u64,
    steps: usize,
    clip_skip: usize,
) -> Tensor {
    let sampler = pipe
        .sampler(Some("ddim"), Some(steps), Default::default())
        .unwrap();
    let negative: Vec<String> = negative.map(String::from).into_iter().collect();
    let embeds = pipe
        .prompt_embeds(
            &[prompt.to_string()],
            &negative,
            n,
            guidance_scale,
            clip_skip,
        )
        .unwrap();
    let opts = GenerateOptions {
        num_images: n,
        seed,
        size: (8, 8),
        guidance_scale,
        prompt_embeds: Some(embeds),
        ..Default::default()
    };
    pipe.generate(&sampler, &opts, 0, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap()
}

#[tokio::test]
async fn a_prompt_generates_the_library_images() {
    let tmp = tempfile::tempdir().unwrap();
    let app = text_app(tmp.path(), ServeConfig::default());
    let (s, _, b) = call(&app, get("/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    let models = json_of(&b);
    let by_id = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    let sd = by_id("sd");
    assert_eq!(
        (
            &sd["conditioning"],
            &sd["class_conditional"],
            &sd["default_guidance_scale"],
            &sd["latent"],
            &sd["sample_size"]
        ),
        (
            &json!("text"),
            &json!(false),
            &json!(7.5),
            &json!(true),
            &json!([16, 16])
        )
    );
    assert_eq!(by_id("unet_class_cond")["conditioning"], "class");
    assert_eq!(by_id("pipeline_basic")["conditioning"], "none");

    // Guided at the pipeline's default scale (7.5) against the empty prompt.
    let req = json!({"model": "sd", "prompt": "a red apple", "n": 2, "steps": 3, "seed": 5, "sampler": "ddim"});
    let (s, _, b) = call(&app, post(req)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r = json_of(&b);
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    let want = library(
        &load(&tmp.path().join("sd")),
        "a red apple",
        None,
        7.5,
        2,
        5,
        3,
        0,
    );
    for i in 0..2 {
        let d = levels_off(
            r["data"][i]["b64_json"].as_str().unwrap(),
            &want.get(i).unwrap(),
        );
        assert!(d <= 1.0, "image {i} differs by {d} levels");
    }
    // "" is a prompt; unguided, and at another size.
    let req = json!({"model": "sd", "prompt": "", "guidance_scale": 1, "size": 32, "steps": 2, "seed": 1});
    let (s, _, b) = call(&app, post(req)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let img = decode_png(json_of(&b)["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!((img.width(), img.height()), (32, 32));
}

#[tokio::test]
async fn a_negative_prompt_steers_guidance_as_the_library_does() {
    let tmp = tempfile::tempdir().unwrap();
    let app = text_app(tmp.path(), ServeConfig::default());
    let pipe = load(&tmp.path().join("sd"));
    let base = json!({"model": "sd", "prompt": "a red apple", "guidance_scale": 4.0, "steps": 3, "seed": 2, "sampler": "ddim"});
    let mut with_negative = base.clone();
    with_negative["negative_prompt"] = json!("grinning face");
    let (s, _, b) = call(&app, post(with_negative)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let steered = json_of(&b)["data"][0]["b64_json"]
        .as_str()
        .unwrap()
        .to_string();
    let want = library(&pipe, "a red apple", Some("grinning face"), 4.0, 1, 2, 3, 0);
    let d = levels_off(&steered, &want.get(0).unwrap());
    assert!(d <= 1.0, "differs from the library by {d} levels");
    // Against the empty prompt instead, the image is another one.
    let plain = library(&pipe, "a red apple", None, 4.0, 1, 2, 3, 0);
    let d = levels_off(&steered, &plain.get(0).unwrap());
    assert!(d > 2.0, "the negative prompt changed nothing ({d} levels)");
}

#[tokio::test]
async fn clip_skip_takes_an_earlier_layer_as_the_library_does() {
    let tmp = tempfile::tempdir().unwrap();
    let app = text_app(tmp.path(), ServeConfig::default());
    let pipe = load(&tmp.path().join("sd"));
    let req = json!({"model": "sd", "prompt": "a red apple", "clip_skip": 1, "guidance_scale": 4.0, "steps": 3, "seed": 2, "sampler": "ddim"});
    let (s, _, b) = call(&app, post(req)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let skipped = json_of(&b)["data"][0]["b64_json"]
        .as_str()
        .unwrap()
        .to_string();
    let want = library(&pipe, "a red apple", None, 4.0, 1, 2, 3, 1);
    let d = levels_off(&skipped, &want.get(0).unwrap());
    assert!(d <= 1.0, "differs from the library by {d} levels");
    let last_layer = library(&pipe, "a red apple", None, 4.0, 1, 2, 3, 0);
    let d = levels_off(&skipped, &last_layer.get(0).unwrap());
    assert!(d > 2.0, "clip_skip changed nothing ({d} levels)");
}

#[tokio::test]
async fn different_prompts_share_a_batch_and_keep_their_images() {
    let tmp = tempfile::tempdir().unwrap();
    let app = text_app(
        tmp.path(),
        ServeConfig {
            max_wait: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let a = json!({"model": "sd", "prompt": "a red apple", "negative_prompt": "grinning face", "n": 2, "steps": 3, "seed": 11, "sampler": "ddim"});
    let b = json!({"model": "sd", "prompt": "grinning face", "guidance_scale": 1, "steps": 3, "seed": 4, "sampler": "euler"});
    let (_, _, alone_a) = call(&app, post(a.clone())).await;
    let (_, _, alone_b) = call(&app, post(b.clone())).await;
    let (ra, rb) = tokio::join!(call(&app, post(a)), call(&app, post(b)));
    for (alone, together, n) in [(alone_a, ra.2, 2), (alone_b, rb.2, 1)] {
        let (alone, together) = (json_of(&alone), json_of(&together));
        assert_eq!(
            together["timings"]["batch_images"], 3,
            "the two requests shared a batch: {together}"
        );
        for i in 0..n {
            let x = decode_png(alone["data"][i]["b64_json"].as_str().unwrap()).to_rgb8();
            let y = decode_png(together["data"][i]["b64_json"].as_str().unwrap()).to_rgb8();
            let d = x
                .as_raw()
                .iter()
                .zip(y.as_raw())
                .map(|(&p, &q)| (p as i32 - q as i32).abs())
                .max()
                .unwrap();
            assert!(d <= 1, "image {i} differs by {d} levels when batched");
        }
    }
}

/// The batcher alone: jobs of different prompts, guided (with and without a guidance interval)
/// and not, batched into one network call per step, give each job's solo result to 1e-5.
#[test]
fn batched_prompt_jobs_equal_their_solo_runs_within_1e_5() {
    let tmp = tempfile::tempdir().unwrap();
    let pipe = load(&text_pipeline(tmp.path()));
    let plan = |name: &str| {
        pipe.sampler(Some(name), Some(4), Default::default())
            .unwrap()
    };
    let (ddim, euler) = (plan("ddim"), plan("euler"));
    let sampler = |name: &str| {
        if name == "ddim" {
            ddim.clone()
        } else {
            euler.clone()
        }
    };
    let specs = [
        ("a red apple", "grinning face", 3.0, None, 2, 7, "ddim"),
        ("grinning face", "", 1.0, None, 1, 8, "euler"),
        (
            "apple",
            "",
            7.5,
            Some(diffuse_core::denoiser::GuidanceInterval::new(0.5, 5.0).unwrap()),
            2,
            9,
            "ddim",
        ),
    ];
    let Pipeline { net, vae, text, .. } = pipe;
    let batcher = Batcher::start(
        Arc::new(net),
        vae.map(Arc::new),
        text.map(Arc::new),
        Device::Cpu,
        BatchConfig {
            max_batch: 16,
            max_wait: Duration::from_millis(500),
            queue: 8,
        },
        Arc::new(Metrics::default()),
    );
    let submit = |i: usize| {
        let (prompt, negative, guidance_scale, interval, n, seed, name) = specs[i];
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            n,
            seed,
            labels: None,
            prompt: Some(JobPrompt {
                prompt: prompt.into(),
                negative: negative.into(),
                clip_skip: 0,
            }),
            guidance_scale,
            guidance_interval: interval,
            null_class: 0,
            sampler: sampler(name),
            size: (8, 8),
            cancel: Arc::new(AtomicBool::new(false)),
            progress: None,
            reply: tx,
            enqueued: Instant::now(),
            admission: Admission::untracked(n),
            edit: None,
        };
        batcher.submit(job).unwrap();
        rx
    };
    let result = |rx: tokio::sync::oneshot::Receiver<Result<JobResult, JobError>>| {
        rx.blocking_recv().unwrap().unwrap()
    };
    let solo: Vec<JobResult> = (0..specs.len()).map(|i| result(submit(i))).collect();
    let receivers: Vec<_> = (0..specs.len()).map(submit).collect();
    let batched: Vec<JobResult> = receivers.into_iter().map(result).collect();
    for (i, (a, b)) in solo.iter().zip(&batched).enumerate() {
        assert_eq!(a.batch_images, specs[i].4, "job {i} ran alone first");
        assert_eq!(b.batch_images, 5, "job {i} shared the batch");
        assert_eq!(a.images.dims(), [specs[i].4, 3, 16, 16]);
        let d = (&a.images - &b.images)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-5, "job {i} differs by {d} when batched");
    }
    batcher.shutdown();
}

#[tokio::test]
async fn prompt_errors_are_400s_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let app = text_app(tmp.path(), ServeConfig::default());
    let bad = StatusCode::BAD_REQUEST;
    let cases = [
        (json!({"model": "sd", "steps": 2}), "prompt", "required"),
        (
            json!({"model": "sd", "negative_prompt": "x", "steps": 2}),
            "prompt",
            "required",
        ),
        (
            json!({"model": "sd", "prompt": "a", "class_label": 1}),
            "class_label",
            "not a `class_label`",
        ),
        (
            json!({"model": "sd", "prompt": "a", "negative_prompt": "b", "guidance_scale": 1}),
            "negative_prompt",
            "guidance",
        ),
        (
            json!({"model": "sd", "prompt": "a".repeat(1001)}),
            "prompt",
            "1001 characters",
        ),
        (
            json!({"model": "sd", "prompt": "a", "negative_prompt": "b".repeat(1001)}),
            "negative_prompt",
            "over the limit",
        ),
        (json!({"model": "sd", "prompt": 7}), "prompt", "string"),
        (
            json!({"model": "unet_class_cond", "class_label": 1, "prompt": "a"}),
            "prompt",
            "class_label",
        ),
        (
            json!({"model": "pipeline_basic", "negative_prompt": "a"}),
            "negative_prompt",
            "not text-to-image",
        ),
        (
            json!({"model": "sd", "prompt": "a", "clip_skip": 99}),
            "clip_skip",
            "layers; use 0..=",
        ),
        (
            json!({"model": "sd", "prompt": "a", "clip_skip": -1}),
            "clip_skip",
            "clip_skip",
        ),
        (
            json!({"model": "unet_class_cond", "class_label": 1, "clip_skip": 1}),
            "clip_skip",
            "not text-to-image",
        ),
    ];
    for (body, field, says) in cases {
        let e = expect_error(&app, post(body.clone()), bad, Some(field)).await;
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    // The work limit counts guidance (on by default for a text model) twice.
    let app = text_app(
        tmp.path().join("b").as_path(),
        ServeConfig {
            max_request_pixel_steps: 16 * 16 * 3,
            ..Default::default()
        },
    );
    let e = expect_error(
        &app,
        post(json!({"model": "sd", "prompt": "a", "steps": 3})),
        bad,
        Some("n"),
    )
    .await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("guidance"),
        "{e}"
    );
    let ok = post(json!({"model": "sd", "prompt": "a", "steps": 3, "guidance_scale": 1}));
    assert_eq!(call(&app, ok).await.0, StatusCode::OK);
}

/// Edits and variations take the prompt as a form field (text as sent, even when it looks like
/// JSON).
#[tokio::test]
async fn a_text_model_varies_an_image_from_a_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let app = text_app(tmp.path(), ServeConfig::default());
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, 128])
    }))
    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
    .unwrap();
    let form = |fields: &[(&str, &str)]| {
        let b = "XyZ";
        let mut body = Vec::new();
        body.extend(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n")
                .bytes(),
        );
        body.extend(&png);
        body.extend(b"\r\n");
        for (k, v) in fields {
            body.extend(
                format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                    .bytes(),
            );
        }
        body.extend(format!("--{b}--\r\n").bytes());
        Request::post("/v1/images/variations")
            .header("content-type", format!("multipart/form-data; boundary={b}"))
            .body(Body::from(body))
            .unwrap()
    };
    let fields = [
        ("model", "sd"),
        ("prompt", "42"),
        ("n", "2"),
        ("steps", "4"),
        ("strength", "0.5"),
        ("seed", "1"),
    ];
    let (s, _, b) = call(&app, form(&fields)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r = json_of(&b);
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    let img = decode_png(r["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!((img.width(), img.height()), (16, 16));
    expect_error(
        &app,
        form(&fields[..1]),
        StatusCode::BAD_REQUEST,
        Some("prompt"),
    )
    .await;
}

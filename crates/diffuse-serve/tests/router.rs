//! Router tests without a socket (axum `oneshot`), for every endpoint and error code.

mod common;
use common::*;

use axum::http::StatusCode;
use axum::Router;
use candle_core::Device;
use diffuse_serve::{app, metrics::Metrics, AppState, ServeConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

#[tokio::test]
async fn health_ready_models_metrics_and_page() {
    let app = app(state(ServeConfig::default()));
    let (s, _, b) = call(&app, get("/healthz")).await;
    assert_eq!(
        (s, json_of(&b)["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    let (s, _, _) = call(&app, get("/readyz")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = call(&app, get("/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    let models = json_of(&b);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["pipeline_basic", "unet_class_cond"]);
    assert_eq!(models["data"][1]["num_classes"], 10);
    let (s, _, b) = call(&app, get("/")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains("<form"));
    let _ = call(
        &app,
        post(json!({"model": "pipeline_basic", "steps": 2, "seed": 1})),
    )
    .await;
    let (s, h, b) = call(&app, get("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&b);
    for m in [
        "diffuse_requests_total{status=\"200\"} 1",
        "diffuse_request_duration_seconds_bucket",
        "diffuse_queue_depth",
        "diffuse_batch_images_bucket",
        "diffuse_images_generated_total 1",
        "diffuse_denoiser_evaluations_per_second",
    ] {
        assert!(text.contains(m), "metrics lack {m}:\n{text}");
    }
}

#[tokio::test]
async fn readyz_is_503_without_models() {
    let app = app(Arc::new(AppState::new(
        ServeConfig::default(),
        Arc::new(Metrics::default()),
    )));
    let (s, _, _) = call(&app, get("/readyz")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn generates_pngs_and_urls() {
    let app = app(state(ServeConfig::default()));
    let (s, _, b) = call(
        &app,
        post(json!({"model": "pipeline_basic", "n": 2, "steps": 3, "seed": 5, "sampler": "euler"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r = json_of(&b);
    assert_eq!(r["seed"], 5);
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    let img = decode_png(r["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!((img.width(), img.height()), (16, 16));
    assert!(r["timings"]["compute_ms"].as_f64().unwrap() > 0.0);

    let (s, _, b) = call(
        &app,
        post(json!({"model": "unet_class_cond", "class_label": 4, "guidance_scale": 3.0, "steps": 3, "seed": 1, "response_format": "url"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let url = json_of(&b)["data"][0]["url"].as_str().unwrap().to_string();
    let (s, h, png) = call(&app, get(&url)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 8);
    let (s, _, _) = call(&app, get("/v1/images/img-999999.png")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn same_seed_same_image_whatever_shares_the_batch() {
    let app = app(state(ServeConfig {
        max_wait: Duration::from_millis(300),
        ..Default::default()
    }));
    let a = json!({"model": "unet_class_cond", "class_label": 2, "n": 2, "steps": 4, "seed": 11, "sampler": "euler_a"});
    let (_, _, alone) = call(&app, post(a.clone())).await;
    let alone = json_of(&alone);
    // Now beside a request with another seed, class, guidance and sampler of the same length.
    let b = json!({"model": "unet_class_cond", "class_label": 7, "n": 3, "steps": 4, "seed": 99, "sampler": "ddim", "guidance_scale": 2.5});
    let (ra, rb) = tokio::join!(call(&app, post(a)), call(&app, post(b)));
    let (together, other) = (json_of(&ra.2), json_of(&rb.2));
    assert_eq!(
        together["timings"]["batch_images"], 5,
        "the two requests shared a batch"
    );
    assert_eq!(other["data"].as_array().unwrap().len(), 3);
    for i in 0..2 {
        let x = decode_png(alone["data"][i]["b64_json"].as_str().unwrap()).to_luma8();
        let y = decode_png(together["data"][i]["b64_json"].as_str().unwrap()).to_luma8();
        let d = x
            .pixels()
            .zip(y.pixels())
            .map(|(p, q)| (p[0] as i32 - q[0] as i32).abs())
            .max()
            .unwrap();
        assert!(d <= 1, "image {i} differs by {d} levels when batched");
    }
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let app = app(state(ServeConfig::default()));
    let bad = StatusCode::BAD_REQUEST;
    expect_error(&app, post_raw("{\"model\": ".into()), bad, Some("body")).await;
    expect_error(&app, post_raw("[1]".into()), bad, Some("body")).await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "n": 0})),
        bad,
        Some("n"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "n": 17})),
        bad,
        Some("n"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "steps": 1000})),
        bad,
        Some("steps"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "steps": "ten"})),
        bad,
        Some("steps"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "eta": -1})),
        bad,
        Some("eta"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "seed": -3})),
        bad,
        Some("seed"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "sampler": "lms"})),
        bad,
        Some("sampler"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "response_format": "jpeg"})),
        bad,
        Some("response_format"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "prompt": "a cat"})),
        bad,
        Some("prompt"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "class_label": 1})),
        bad,
        Some("class_label"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "guidance_scale": 3})),
        bad,
        Some("guidance_scale"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "size": 21})),
        bad,
        Some("size"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "size": 1024})),
        bad,
        Some("size"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "unet_class_cond"})),
        bad,
        Some("class_label"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "unet_class_cond", "class_label": 10})),
        bad,
        Some("class_label"),
    )
    .await;
    expect_error(
        &app,
        post(json!({"model": "nope"})),
        StatusCode::NOT_FOUND,
        Some("model"),
    )
    .await;
    // Body size limit.
    // Body size limit: the API's JSON error (the soak test found axum's plain text here), and
    // counted in the metrics.
    let big = json!({"model": "pipeline_basic", "sampler": "x".repeat(100_000)});
    let e = expect_error(&app, post(big), StatusCode::PAYLOAD_TOO_LARGE, Some("body")).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-body-bytes"),
        "{e}"
    );
    let (_, _, m) = call(&app, get("/metrics")).await;
    assert!(
        String::from_utf8_lossy(&m).contains("status=\"413\""),
        "{}",
        String::from_utf8_lossy(&m)
    );
}

#[tokio::test]
async fn api_key_is_enforced() {
    let app = app(state(ServeConfig {
        api_key: Some("s3cret".into()),
        ..Default::default()
    }));
    let body = json!({"model": "pipeline_basic", "steps": 1, "seed": 0});
    expect_error(&app, post(body.clone()), StatusCode::UNAUTHORIZED, None).await;
    let mut wrong = post(body.clone());
    wrong
        .headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    expect_error(&app, wrong, StatusCode::UNAUTHORIZED, None).await;
    let (s, _, _) = call(&app, get("/v1/models")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let mut right = post(body);
    right
        .headers_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let (s, _, _) = call(&app, right).await;
    assert_eq!(s, StatusCode::OK);
    // Health stays open for probes.
    assert_eq!(call(&app, get("/healthz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    let app = app(state(ServeConfig {
        max_batch: 1,
        queue: 1,
        max_steps: 1000,
        ..Default::default()
    }));
    let long = json!({"model": "pipeline_basic", "steps": 400, "seed": 1, "sampler": "euler"});
    let a = tokio::spawn(call_owned(app.clone(), long.clone())); // runs
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = tokio::spawn(call_owned(app.clone(), long.clone())); // waits in the queue
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, h, body) = call(&app, post(long)).await; // no room
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(h["retry-after"], "1");
    assert_eq!(a.await.unwrap(), StatusCode::OK);
    assert_eq!(b.await.unwrap(), StatusCode::OK);
}

async fn call_owned(app: Router, body: Value) -> StatusCode {
    call(&app, post(body)).await.0
}

#[tokio::test]
async fn streams_progress_then_the_result() {
    let app = app(state(ServeConfig::default()));
    let (s, h, b) = call(
        &app,
        post(json!({"model": "pipeline_basic", "steps": 5, "seed": 3, "stream": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "text/event-stream");
    let text = String::from_utf8_lossy(&b);
    assert_eq!(text.matches("event: progress").count(), 5, "{text}");
    assert!(text.contains("data: {\"step\":5,\"total\":5}"));
    let result = text
        .split("event: result\ndata: ")
        .nth(1)
        .expect("a result event");
    let r: Value = serde_json::from_str(result.lines().next().unwrap()).unwrap();
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_work() {
    let s = state(ServeConfig {
        max_steps: 1000,
        ..Default::default()
    });
    let app = app(s.clone());
    let req =
        post(json!({"model": "pipeline_basic", "steps": 1000, "seed": 1, "sampler": "euler"}));
    // Give up on the request after a moment: the future (the connection) is dropped.
    let r = tokio::time::timeout(Duration::from_millis(200), app.clone().oneshot(req)).await;
    assert!(r.is_err(), "the long request should still be running");
    // The worker notices within a step and frees itself for the next request.
    let start = std::time::Instant::now();
    let (st, _, _) = call(
        &app,
        post(json!({"model": "pipeline_basic", "steps": 2, "seed": 2})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the cancelled job kept the worker busy"
    );
    let text = s.metrics.render();
    assert!(text.contains("diffuse_cancelled_total 1"), "{text}");
}

#[tokio::test]
async fn serves_a_latent_pipeline_decoding_with_its_vae() {
    use diffuse_models::pipeline::{decode_latents, generate, GenerateOptions};
    use diffuse_models::weights;
    let tmp = tempfile::tempdir().unwrap();
    let (app, pipe, sched) = latent_app(tmp.path());
    let (unet_dir, vae_dir) = (pipe.join("unet"), pipe.join("vae"));
    let (st, _, b) = call(&app, get("/v1/models")).await;
    assert_eq!(st, StatusCode::OK);
    let m = &json_of(&b)["data"][0];
    assert_eq!(m["latent"], true);
    assert_eq!(
        m["sample_size"],
        json!([64, 64]),
        "UNet sample_size 16 × VAE downscale 4"
    );
    let req = json!({"model": "latent", "n": 2, "steps": 3, "seed": 5, "size": 16, "class_label": 7, "sampler": "ddim"});
    let (st, _, b) = call(&app, post(req)).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r = json_of(&b);
    // The same as the library's latent pipeline with the same seed.
    let (unet, _) = weights::load_net(&unet_dir, &Device::Cpu).unwrap();
    let (vae, _) = weights::load_vae(&vae_dir, &Device::Cpu).unwrap();
    let cfg = diffuse_core::config::SchedulerConfig::from_json_map(&sched).unwrap();
    let sampler = diffuse_core::sampler::Sampler::new(&cfg, 3).unwrap();
    let opts = GenerateOptions {
        num_images: 2,
        seed: 5,
        size: (4, 4),
        class_labels: Some(vec![7]),
        ..Default::default()
    };
    let latents = generate(&unet, &sampler, &opts, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let want = decode_latents(&vae, &latents, 0).unwrap();
    for i in 0..2 {
        let img = decode_png(r["data"][i]["b64_json"].as_str().unwrap()).to_luma8();
        assert_eq!(img.dimensions(), (16, 16));
        let w: Vec<f32> = want
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = img
            .pixels()
            .zip(&w)
            .map(|(p, &x)| (p[0] as f32 - ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1.0, "image {i} differs by {d} levels");
    }
    let bad = StatusCode::BAD_REQUEST;
    let req = json!({"model": "latent", "size": 12, "class_label": 7});
    let e = expect_error(&app, post(req), bad, Some("size")).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("multiple of 8"),
        "{e}"
    );
}

#[tokio::test]
async fn serves_a_pixel_dit_pipeline() {
    use diffuse_models::pipeline::{generate, GenerateOptions};
    use diffuse_models::weights;
    // A pixel-space DiTPipeline folder: transformer/ (dit_p2_rgb: 3 channels, 5 classes + null),
    // scheduler/, model_index.json with "vae": [null, null].
    let tmp = tempfile::tempdir().unwrap();
    let pipe = tmp.path().join("dit");
    let dit_dir = fixtures().join("dit_p2_rgb");
    weights::copy_model_folder(&dit_dir, &pipe.join("transformer")).unwrap();
    std::fs::create_dir_all(pipe.join("scheduler")).unwrap();
    let sched_path = fixtures().join("pipeline_dit/scheduler/scheduler_config.json");
    std::fs::copy(&sched_path, pipe.join("scheduler/scheduler_config.json")).unwrap();
    let (net, _) = weights::load_net(&dit_dir, &Device::Cpu).unwrap();
    let index = weights::pipeline_index(&net.config(), "DDIMScheduler", false);
    std::fs::write(pipe.join("model_index.json"), index.to_string()).unwrap();

    let mut s = AppState::new(ServeConfig::default(), Arc::new(Metrics::default()));
    s.add_model(&pipe, &Device::Cpu).unwrap();
    let app = app(Arc::new(s));
    let (st, _, b) = call(&app, get("/v1/models")).await;
    assert_eq!(st, StatusCode::OK);
    let m = &json_of(&b)["data"][0];
    assert_eq!(
        (
            &m["network"],
            &m["num_classes"],
            &m["latent"],
            &m["sample_size"]
        ),
        (
            &json!("DiTTransformer2DModel"),
            &json!(6),
            &json!(false),
            &json!([12, 12])
        )
    );
    let req = json!({"model": "dit", "n": 2, "steps": 3, "seed": 5, "class_label": 4, "guidance_scale": 2.0});
    let (st, _, b) = call(&app, post(req)).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r = json_of(&b);
    // The same as the library's pipeline with the same seed, class and guidance.
    let text = std::fs::read_to_string(&sched_path).unwrap();
    let cfg = diffuse_core::config::SchedulerConfig::from_json_str(&text).unwrap();
    let sampler = diffuse_core::sampler::Sampler::new(&cfg, 3).unwrap();
    let opts = GenerateOptions {
        num_images: 2,
        seed: 5,
        size: (12, 12),
        class_labels: Some(vec![4]),
        guidance_scale: 2.0,
        ..Default::default()
    };
    let want = generate(&net, &sampler, &opts, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    for i in 0..2 {
        let img = decode_png(r["data"][i]["b64_json"].as_str().unwrap()).to_rgb8();
        assert_eq!(img.dimensions(), (12, 12));
        let w: Vec<f32> = want
            .get(i)
            .unwrap()
            .permute((1, 2, 0))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = img
            .as_raw()
            .iter()
            .zip(&w)
            .map(|(&p, &x)| (p as f32 - ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1.0, "image {i} differs by {d} levels");
    }
    let bad = StatusCode::BAD_REQUEST;
    let e = expect_error(
        &app,
        post(json!({"model": "dit", "size": 13, "class_label": 1})),
        bad,
        Some("size"),
    )
    .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("multiple of 2"),
        "{e}"
    );
    expect_error(
        &app,
        post(json!({"model": "dit", "class_label": 6})),
        bad,
        Some("class_label"),
    )
    .await;
}

/// A model whose scheduler config records `num_inference_steps` (a distilled student) is
/// sampled in that many steps when a request gives none; given steps still win.
#[tokio::test]
async fn default_steps_come_from_the_scheduler_config() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("student");
    for part in ["unet", "scheduler"] {
        std::fs::create_dir_all(m.join(part)).unwrap();
        for f in std::fs::read_dir(fixtures().join("pipeline_basic").join(part)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, m.join(part).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        fixtures().join("pipeline_basic/model_index.json"),
        m.join("model_index.json"),
    )
    .unwrap();
    let p = m.join("scheduler/scheduler_config.json");
    let mut sched: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    sched["num_inference_steps"] = json!(3);
    std::fs::write(&p, sched.to_string()).unwrap();
    let mut s = AppState::new(ServeConfig::default(), Arc::new(Metrics::default()));
    let id = s.add_model(&m, &Device::Cpu).unwrap();
    let app = app(Arc::new(s));
    for (steps, total) in [(None, 3), (Some(2), 2)] {
        let mut body = json!({"model": id, "seed": 3, "stream": true});
        if let Some(n) = steps {
            body["steps"] = json!(n);
        }
        let (s, _, b) = call(&app, post(body)).await;
        assert_eq!(s, StatusCode::OK);
        let text = String::from_utf8_lossy(&b);
        assert_eq!(text.matches("event: progress").count(), total, "{text}");
    }
}

/// Loading errors are typed: a second folder of the same name, or one that is not a model.
#[test]
fn add_model_errors_are_typed_and_name_the_problem() {
    let mut s = AppState::new(ServeConfig::default(), Arc::new(Metrics::default()));
    s.add_model(&fixtures().join("pipeline_basic"), &Device::Cpu)
        .unwrap();
    let e = s
        .add_model(&fixtures().join("pipeline_basic"), &Device::Cpu)
        .unwrap_err();
    assert!(matches!(&e, diffuse_serve::Error::DuplicateId(id) if id == "pipeline_basic"));
    assert_eq!(e.to_string(), "two models named \"pipeline_basic\"");
    let e = s
        .add_model(&fixtures().join("no_such_model"), &Device::Cpu)
        .unwrap_err();
    assert!(matches!(e, diffuse_serve::Error::Model(_)));
    assert!(e.to_string().contains("not a folder"), "{e}");
    s.shutdown();
}

/// A flow-matching pipeline (the quick start's kind) around the class-conditional fixture UNet,
/// with the sampling defaults `diffuse train` records.
fn flow_pipeline(root: &std::path::Path) -> PathBuf {
    use diffuse_models::weights;
    let pipe = root.join("flow");
    weights::copy_model_folder(&fixtures().join("unet_class_cond"), &pipe.join("unet")).unwrap();
    std::fs::create_dir_all(pipe.join("scheduler")).unwrap();
    std::fs::write(
        pipe.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}"#,
    )
    .unwrap();
    let mut index = weights::model_index("FlowMatchEulerDiscreteScheduler", false);
    weights::SamplingDefaults {
        num_inference_steps: Some(20),
        guidance_scale: Some(2.0),
        guidance_interval: Some(diffuse_core::denoiser::GuidanceInterval::new(0.3, 5.0).unwrap()),
        timesteps: None,
    }
    .write_into(&mut index);
    std::fs::write(pipe.join("model_index.json"), index.to_string()).unwrap();
    pipe
}

#[tokio::test]
async fn a_flow_model_lists_its_samplers_and_refuses_the_others_with_400() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = AppState::new(ServeConfig::default(), Arc::new(Metrics::default()));
    s.add_model(&flow_pipeline(tmp.path()), &Device::Cpu)
        .unwrap();
    let app = app(Arc::new(s));
    let (st, _, b) = call(&app, get("/v1/models")).await;
    assert_eq!(st, StatusCode::OK);
    let m = &json_of(&b)["data"][0];
    assert_eq!(
        (
            &m["objective"],
            &m["default_sampler"],
            &m["default_steps"],
            &m["default_guidance_scale"]
        ),
        (
            &json!("flow"),
            &json!("flow_euler"),
            &json!(20),
            &json!(2.0)
        ),
        "{m}"
    );
    assert_eq!(m["default_guidance_interval"], json!([0.3, 5.0]), "{m}");
    let works: Vec<&str> = m["samplers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["works"] == json!(true))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        works,
        [
            "euler",
            "heun",
            "dpmpp_2m",
            "unipc",
            "flow_euler",
            "flow_heun"
        ]
    );
    // ddim cannot drive a flow model: 400 on `sampler`, with the list.
    let e = expect_error(
        &app,
        post(json!({"class_label": 3, "n": 1, "steps": 2, "sampler": "ddim"})),
        StatusCode::BAD_REQUEST,
        Some("sampler"),
    )
    .await;
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`ddim` cannot drive this flow matching"),
        "{msg}"
    );
    assert_eq!(e["error"]["samplers"], json!(works), "{e}");
    // DPM-Solver++ on flow σ works, and so does the default (flow_euler, 20 steps, guidance 2).
    for body in [
        json!({"class_label": 3, "n": 2, "steps": 4, "seed": 1, "sampler": "dpmpp_2m"}),
        json!({"class_label": 3, "n": 2, "seed": 1}),
    ] {
        let (st, _, b) = call(&app, post(body.clone())).await;
        assert_eq!(
            st,
            StatusCode::OK,
            "{body}: {}",
            String::from_utf8_lossy(&b)
        );
        assert_eq!(json_of(&b)["data"].as_array().unwrap().len(), 2);
    }
}

/// Issue 21: one request's work (n × size² × steps, × 2 with guidance) is capped, with a 400
/// that names the product and the flag.
#[tokio::test]
async fn a_request_over_the_work_limit_is_a_400_naming_the_product() {
    let app = app(state(ServeConfig {
        max_request_pixel_steps: 4 * 16 * 16 * 10,
        ..Default::default()
    }));
    let ok = json!({"model": "pipeline_basic", "n": 4, "steps": 10, "seed": 1});
    let (st, _, b) = call(&app, post(ok)).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let big = json!({"model": "pipeline_basic", "n": 4, "steps": 11, "seed": 1});
    let e = expect_error(&app, post(big), StatusCode::BAD_REQUEST, Some("n")).await;
    let m = e["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("4 × 16×16 × 11") && m.contains("--max-request-pixel-steps"),
        "{m}"
    );
    // Guidance doubles the work of a class-conditional request (8×8 images: 16 × 64 × 10 fits
    // alone, not twice).
    let plain = json!({"model": "unet_class_cond", "n": 16, "steps": 10, "seed": 1,
        "class_label": 1, "guidance_scale": 1.0});
    assert_eq!(call(&app, post(plain)).await.0, StatusCode::OK);
    let guided = json!({"model": "unet_class_cond", "n": 16, "steps": 10, "seed": 1,
        "class_label": 1, "guidance_scale": 3.0});
    let e = expect_error(&app, post(guided), StatusCode::BAD_REQUEST, Some("n")).await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("× 2 (guidance)"),
        "{e}"
    );
}

/// Issue 21: the images queued or running over all models are capped (a 429), and a finished
/// or abandoned request gives its images back.
#[tokio::test]
async fn in_flight_images_are_capped_and_given_back() {
    let s = state(ServeConfig {
        max_batch: 1,
        max_steps: 1000,
        max_in_flight_images: 3,
        ..Default::default()
    });
    let app = app(s.clone());
    let long =
        json!({"model": "pipeline_basic", "n": 2, "steps": 300, "seed": 1, "sampler": "euler"});
    let a = tokio::spawn(call_owned(app.clone(), long));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.in_flight_images(), 2);
    let two = json!({"model": "pipeline_basic", "n": 2, "steps": 2, "seed": 2});
    let (st, h, body) = call(&app, post(two.clone())).await;
    assert_eq!(
        st,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(h["retry-after"], "1");
    assert!(String::from_utf8_lossy(&body).contains("2 images are in flight"));
    assert_eq!(a.await.unwrap(), StatusCode::OK);
    assert_eq!(s.in_flight_images(), 0);
    assert_eq!(call(&app, post(two)).await.0, StatusCode::OK);
    // A client that goes away: its images are given back once the worker drops the job.
    let req = post(
        json!({"model": "pipeline_basic", "n": 3, "steps": 1000, "seed": 1,
        "sampler": "euler"}),
    );
    let r = tokio::time::timeout(Duration::from_millis(150), app.clone().oneshot(req)).await;
    assert!(r.is_err());
    let start = std::time::Instant::now();
    while s.in_flight_images() != 0 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.in_flight_images(), 0);
}

#[tokio::test]
async fn a_guidance_interval_guides_only_there_as_the_library_does() {
    use diffuse_core::denoiser::GuidanceInterval;
    use diffuse_models::pipeline::{generate, GenerateOptions, LoadOptions, Pipeline};
    let app = app(state(ServeConfig::default()));
    let images = |v: Value| {
        let app = app.clone();
        async move {
            let (st, _, b) = call(&app, post(v)).await;
            assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
            let r = json_of(&b);
            decode_png(r["data"][0]["b64_json"].as_str().unwrap()).to_luma8()
        }
    };
    let base = json!({"model": "unet_class_cond", "class_label": 4, "steps": 8, "seed": 2, "sampler": "euler", "guidance_scale": 3});
    let with = |g: Value| {
        let mut v = base.clone();
        v["guidance_interval"] = g;
        v
    };
    let everywhere = images(base.clone()).await;
    assert_eq!(images(with(json!([0.0, 1e9]))).await, everywhere);
    assert_eq!(images(with(Value::Null)).await, everywhere);
    let mut unguided = base.clone();
    unguided["guidance_scale"] = json!(1);
    assert_eq!(
        images(with(json!([1e8, 1e9]))).await,
        images(unguided).await
    );
    // [0.3, 5]: some steps guided, some not; as the library's.
    let got = images(with(json!([0.3, 5.0]))).await;
    assert_ne!(got, everywhere);
    let dir = fixtures().join("unet_class_cond");
    let pipe = Pipeline::load(&dir, &LoadOptions::default(), &Device::Cpu).unwrap();
    let cfg = diffuse_core::compat::resolve_sampler("euler", &pipe.model_scheduler).unwrap();
    let sampler = diffuse_core::sampler::Sampler::new(&cfg, 8).unwrap();
    let guided = sampler
        .guided_timesteps(&GuidanceInterval::new(0.3, 5.0).unwrap())
        .unwrap();
    assert!(!guided.is_empty() && guided.len() < 8, "{guided:?}");
    let opts = GenerateOptions {
        seed: 2,
        size: (8, 8),
        class_labels: Some(vec![4]),
        guidance_scale: 3.0,
        guidance_interval: Some(GuidanceInterval::new(0.3, 5.0).unwrap()),
        ..Default::default()
    };
    let want = generate(&pipe.net, &sampler, &opts, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let d = got
        .pixels()
        .zip(&w)
        .map(|(p, &x)| (p[0] as f32 - (x.clamp(-1.0, 1.0) + 1.0) * 127.5).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1.0, "differs from the library by {d} levels");
    let bad = StatusCode::BAD_REQUEST;
    for g in [json!([5, 1]), json!([1]), json!("0.3,5")] {
        expect_error(&app, post(with(g)), bad, Some("guidance_interval")).await;
    }
}

/// `pipeline_basic` (an ε UNet) with an LCMScheduler config: what a consistency-distilled
/// student's folder looks like.
fn lcm_pipeline(root: &std::path::Path) -> PathBuf {
    let m = root.join("lcm");
    for part in ["unet", "scheduler"] {
        std::fs::create_dir_all(m.join(part)).unwrap();
        for f in std::fs::read_dir(fixtures().join("pipeline_basic").join(part)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, m.join(part).join(f.file_name().unwrap())).unwrap();
        }
    }
    let index = fixtures().join("pipeline_basic/model_index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    index["scheduler"][1] = json!("LCMScheduler");
    std::fs::write(m.join("model_index.json"), index.to_string()).unwrap();
    let p = m.join("scheduler/scheduler_config.json");
    let mut sched: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    sched["_class_name"] = json!("LCMScheduler");
    std::fs::write(&p, sched.to_string()).unwrap();
    m
}

/// The progress events of a streamed request and its result.
async fn streamed(app: &Router, body: Value) -> (usize, Value) {
    let (st, _, b) = call(app, post(body.clone())).await;
    let text = String::from_utf8_lossy(&b);
    assert_eq!(st, StatusCode::OK, "{body}: {text}");
    let result = text
        .split("event: result\ndata: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no result event: {text}"));
    let r = serde_json::from_str(result.lines().next().unwrap()).unwrap();
    (text.matches("event: progress").count(), r)
}

/// Chosen timesteps plan an LCM (or FlowMatch Euler) request: as many model calls as
/// timesteps, the library's images with the request's γ, and batched with any request of as
/// many calls; classes that take none, γ outside [0, 1], and `steps` with `timesteps` are 400s
/// naming the field.
#[tokio::test]
async fn timesteps_and_gamma_plan_consistency_sampling() {
    use diffuse_core::sampler::SamplerOptions;
    use diffuse_models::pipeline::{generate, GenerateOptions, LoadOptions, Pipeline};
    let tmp = tempfile::tempdir().unwrap();
    let mut s = AppState::new(
        ServeConfig {
            max_wait: Duration::from_millis(300),
            ..Default::default()
        },
        Arc::new(Metrics::default()),
    );
    let lcm = lcm_pipeline(tmp.path());
    s.add_model(&lcm, &Device::Cpu).unwrap();
    s.add_model(&flow_pipeline(tmp.path()), &Device::Cpu)
        .unwrap();
    s.add_model(&fixtures().join("pipeline_basic"), &Device::Cpu)
        .unwrap();
    let app = app(Arc::new(s));
    let (_, _, b) = call(&app, get("/v1/models")).await;
    let models = json_of(&b);
    assert_eq!(models["data"][1]["id"], "lcm");
    assert_eq!(models["data"][1]["default_sampler"], "lcm");

    let ts = [999.0, 759.0, 499.0, 259.0];
    let body =
        json!({"model": "lcm", "n": 2, "timesteps": ts, "gamma": 0.3, "seed": 4, "stream": true});
    let (calls, r) = streamed(&app, body).await;
    assert_eq!(calls, 4);
    // The library's LCM sampling over the same timesteps and γ.
    let pipe = Pipeline::load(&lcm, &LoadOptions::default(), &Device::Cpu).unwrap();
    let opts = SamplerOptions {
        gamma: 0.3,
        ..Default::default()
    };
    let sampler = pipe.sampler_at(None, &ts, opts).unwrap();
    let gen = GenerateOptions {
        num_images: 2,
        seed: 4,
        size: (16, 16),
        ..Default::default()
    };
    let want = generate(&pipe.net, &sampler, &gen, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    for i in 0..2 {
        let img = decode_png(r["data"][i]["b64_json"].as_str().unwrap()).to_rgb8();
        let w: Vec<f32> = want
            .get(i)
            .unwrap()
            .permute((1, 2, 0))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = img
            .as_raw()
            .iter()
            .zip(&w)
            .map(|(&p, &x)| (p as f32 - (x.clamp(-1.0, 1.0) + 1.0) * 127.5).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1.0, "image {i} differs from the library by {d} levels");
    }
    // γ reaches the sampler: γ = 0 (deterministic) gives other images.
    let body =
        json!({"model": "lcm", "n": 2, "timesteps": ts, "gamma": 0.0, "seed": 4, "stream": true});
    let (_, r0) = streamed(&app, body).await;
    assert_ne!(r0["data"], r["data"]);

    // Three timesteps batch with a three-step request (of another sampler) and keep their
    // images whatever shares the batch.
    let three = json!({"model": "lcm", "timesteps": [999, 499, 99], "seed": 8});
    let (_, _, alone) = call(&app, post(three.clone())).await;
    let ddim = json!({"model": "lcm", "n": 2, "steps": 3, "sampler": "ddim", "seed": 9});
    let (a, b) = tokio::join!(call(&app, post(three)), call(&app, post(ddim)));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    let together = json_of(&a.2);
    assert_eq!(together["timings"]["batch_images"], 3, "{together}");
    assert_eq!(together["data"], json_of(&alone)["data"]);

    // FlowMatch Euler takes timesteps too (σ = t / 1000).
    let body = json!({"model": "flow", "class_label": 1, "timesteps": [1000, 600, 200], "seed": 1, "stream": true});
    assert_eq!(streamed(&app, body).await.0, 3);

    let bad = StatusCode::BAD_REQUEST;
    // DDIM takes no timesteps: the library's line, naming the classes that do.
    let e = expect_error(
        &app,
        post(json!({"model": "pipeline_basic", "timesteps": [999, 499]})),
        bad,
        Some("timesteps"),
    )
    .await;
    let m = e["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("DDIMScheduler does not take custom timesteps")
            && m.contains("LCMScheduler")
            && !m.contains('\n'),
        "{m}"
    );
    // Nor does an LCM model driven by another sampler.
    expect_error(
        &app,
        post(json!({"model": "lcm", "sampler": "ddim", "timesteps": [999, 499]})),
        bad,
        Some("timesteps"),
    )
    .await;
    let e = expect_error(
        &app,
        post(json!({"model": "lcm", "steps": 4, "timesteps": ts})),
        bad,
        Some("timesteps"),
    )
    .await;
    let m = e["error"]["message"].as_str().unwrap();
    assert!(m.contains("`steps`") && m.contains("`timesteps`"), "{m}");
    for g in [json!(2), json!(-0.5), json!("1")] {
        expect_error(
            &app,
            post(json!({"model": "lcm", "gamma": g})),
            bad,
            Some("gamma"),
        )
        .await;
    }
    for t in [
        json!([]),
        json!("999,499"),
        json!([999, "x"]),
        json!([499, 999]),
        json!([1000, 500]),
        json!(vec![1; 201]),
    ] {
        expect_error(
            &app,
            post(json!({"model": "lcm", "timesteps": t})),
            bad,
            Some("timesteps"),
        )
        .await;
    }
}

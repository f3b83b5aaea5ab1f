//! What the router tests share: the fixture models, one call through the router, JSON and PNG
//! decoding.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine;
use candle_core::Device;
use diffuse_serve::{metrics::Metrics, AppState, ServeConfig};
use http_body_util::BodyExt;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tower::ServiceExt;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../diffuse-models/tests/fixtures")
}

pub fn state(config: ServeConfig) -> Arc<AppState> {
    let mut s = AppState::new(config, Arc::new(Metrics::default()));
    s.add_model(&fixtures().join("pipeline_basic"), &Device::Cpu)
        .unwrap();
    s.add_model(&fixtures().join("unet_class_cond"), &Device::Cpu)
        .unwrap();
    Arc::new(s)
}

pub async fn call(
    app: &Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

pub fn post(body: Value) -> Request<Body> {
    post_raw(body.to_string())
}

pub fn post_raw(body: String) -> Request<Body> {
    Request::post("/v1/images/generations")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

pub fn decode_png(b64: &str) -> image::DynamicImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&bytes).unwrap()
}

/// Calls `req`, checks the status and the error field, returns the error body.
pub async fn expect_error(
    app: &Router,
    req: Request<Body>,
    status: StatusCode,
    field: Option<&str>,
) -> Value {
    let (s, _, b) = call(app, req).await;
    assert_eq!(s, status, "{}", String::from_utf8_lossy(&b));
    let e = json_of(&b);
    if let Some(f) = field {
        assert_eq!(e["error"]["field"], f, "{e}");
    }
    assert!(e["error"]["message"].as_str().unwrap().len() > 5);
    e
}

/// A latent pipeline folder `root/latent` (UNet `unet_timestep_class` on the VAE
/// `vae_gray_plain`, 64 px images from its config) served alone: the app, the
/// folder and its scheduler config.
pub fn latent_app(root: &std::path::Path) -> (Router, PathBuf, serde_json::Map<String, Value>) {
    let dir = root.join("latent");
    let text =
        std::fs::read_to_string(fixtures().join("pipeline_latent/scheduler/scheduler_config.json"));
    let sched = serde_json::from_str(&text.unwrap()).unwrap();
    diffuse_models::weights::write_latent_pipeline(
        &dir,
        &fixtures().join("unet_timestep_class"),
        &fixtures().join("vae_gray_plain"),
        &sched,
    )
    .unwrap();
    let mut s = AppState::new(ServeConfig::default(), Arc::new(Metrics::default()));
    s.add_model(&dir, &Device::Cpu).unwrap();
    (diffuse_serve::app(Arc::new(s)), dir, sched)
}

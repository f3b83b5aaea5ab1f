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

/// A tiny random text-to-image pipeline folder `root/sd` (a StableDiffusionPipeline):
/// `unet/` (a UNet2DConditionModel, cross_attention_dim 12, sample_size 8), `vae/` (the
/// RGB fixture, 4 latent channels, downscale 2: 16 px images), `tokenizer/` (BPE learnt from
/// two captions, 8 tokens long), `text_encoder/` (a 1-layer CLIP, hidden_size 12) and a DDIM
/// `scheduler/`.
pub fn text_pipeline(root: &std::path::Path) -> PathBuf {
    use candle_core::DType;
    use diffuse_models::text::{ClipTextConfig, ClipTextModel, ClipTokenizer};
    use diffuse_models::{weights, Network, NetworkConfig};
    let dir = root.join("sd");
    let sd = fixtures().join("sd/pipeline_sd");
    let unet = r#"{"_class_name":"UNet2DConditionModel","sample_size":8,"in_channels":4,"out_channels":4,"block_out_channels":[16,32],"down_block_types":["CrossAttnDownBlock2D","DownBlock2D"],"up_block_types":["UpBlock2D","CrossAttnUpBlock2D"],"layers_per_block":1,"attention_head_dim":[2,4],"cross_attention_dim":12,"norm_num_groups":8}"#;
    let cfg = NetworkConfig::from_json_str(unet).unwrap();
    let (_, varmap) = weights::build::<Network>(&cfg, &Device::Cpu).unwrap();
    cfg.seeded_init(&varmap, 3).unwrap();
    weights::save(&cfg, &varmap, &dir.join("unet"), DType::F32).unwrap();
    weights::copy_model_folder(&sd.join("vae"), &dir.join("vae")).unwrap();
    let tok = ClipTokenizer::train(["a red apple", "grinning face"], 20)
        .unwrap()
        .with_model_max_length(8)
        .unwrap();
    tok.save(&dir.join("tokenizer")).unwrap();
    let text_cfg = ClipTextConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 12,
        intermediate_size: 24,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        max_position_embeddings: 8,
        eos_token_id: tok.eos_id(),
        bos_token_id: Some(tok.bos_id()),
        pad_token_id: Some(tok.pad_id()),
        ..Default::default()
    };
    let (encoder, _) = ClipTextModel::build(&text_cfg, &Device::Cpu, 0).unwrap();
    encoder.save(&dir.join("text_encoder")).unwrap();
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::copy(
        sd.join("scheduler/scheduler_config.json"),
        dir.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let index = weights::sd_model_index("DDIMScheduler");
    std::fs::write(dir.join("model_index.json"), index.to_string()).unwrap();
    dir
}

/// The largest difference, in 8-bit levels, between a PNG of the answer and an image
/// `[C, H, W]` in [−1, 1].
pub fn levels_off(b64: &str, want: &candle_core::Tensor) -> f32 {
    let img = decode_png(b64).to_rgb8();
    let w: Vec<f32> = want
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(img.as_raw().len(), w.len(), "image size");
    img.as_raw()
        .iter()
        .zip(&w)
        .map(|(&p, &x)| (p as f32 - ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)).abs())
        .fold(0f32, f32::max)
}

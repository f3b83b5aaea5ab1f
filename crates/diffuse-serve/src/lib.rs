//! diffuse-serve: an HTTP image-generation service over diffusers pipelines (UNet2DModel or
//! DiTTransformer2DModel, pixel or latent; text-to-image StableDiffusionPipelines).
//!
//! `app(state)` is the whole service as an axum `Router` (tested without a socket, as in axum's
//! `examples/testing`): `POST /v1/images/generations` (JSON or server-sent events),
//! `POST /v1/images/edits` and `/v1/images/variations` (multipart forms, [`upload`]),
//! `GET /v1/models`, `/v1/images/{id}.png`, `/healthz`, `/readyz`, `/metrics`, and a web page
//! at `/`. Requests go through a per-model [`batcher::Batcher`].

pub mod batcher;
pub mod metrics;
pub mod request;
pub mod upload;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use batcher::{Admission, BatchConfig, Batcher, Job, JobResult, SubmitError};
use candle_core::Device;
use diffuse_core::compat::{self, Objective};
use diffuse_core::config::SchedulerConfig;
use diffuse_models::pipeline::{LoadOptions, Pipeline, PromptEncoder};
use metrics::Metrics;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use request::ApiError;

/// Why a model folder could not be added to the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The folder does not load (the message names the file and what is wrong).
    #[error(transparent)]
    Model(#[from] diffuse_models::Error),
    /// Two folders with the same name, which is the model's id.
    #[error("two models named {0:?}")]
    DuplicateId(String),
}

/// Image side of a model whose config records no `sample_size`.
const DEFAULT_SIZE: usize = 32;

/// Limits and batching settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue: usize,
    pub api_key: Option<String>,
    pub max_n: usize,
    pub max_steps: usize,
    pub max_size: usize,
    pub max_body_bytes: usize,
    /// The largest form body of the edit endpoints (image and mask files included).
    pub max_upload_bytes: usize,
    /// The most work one request may ask for: n × height × width × steps (× 2 with
    /// classifier-free guidance), at image size. Memory and time grow with it.
    pub max_request_pixel_steps: u64,
    /// The most images queued or being denoised at once, over all models; more is a 429.
    pub max_in_flight_images: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_batch: 16,
            max_wait: Duration::from_millis(20),
            queue: 64,
            api_key: None,
            max_n: 16,
            max_steps: 200,
            max_size: 256,
            max_body_bytes: 64 * 1024,
            max_upload_bytes: 4 << 20,
            // 16 images of 64×64 at 100 steps, or one 256×256 image at 100 steps.
            max_request_pixel_steps: 16 * 64 * 64 * 100,
            max_in_flight_images: 256,
        }
    }
}

/// A loaded model and its queue.
pub struct ModelEntry {
    pub id: String,
    /// The denoising network (UNet or DiT).
    pub model: Arc<diffuse_models::Network>,
    /// The pipeline's scheduler config as written (DDIM defaults for a bare UNet folder).
    pub scheduler: Map<String, Value>,
    /// The same, parsed: its prediction type is the model's objective, which decides the
    /// samplers that can drive it ([`diffuse_core::compat`]).
    pub model_scheduler: SchedulerConfig,
    /// The sampler, steps and guidance a request without them gets.
    pub default_sampler: &'static str,
    pub default_steps: usize,
    /// The recorded timesteps of its own sampler (a multistep flow consistency student).
    pub default_timesteps: Option<Vec<f64>>,
    pub default_guidance: f64,
    pub default_guidance_interval: Option<diffuse_core::denoiser::GuidanceInterval>,
    /// Default image size (for a latent pipeline: the UNet's sample_size times the VAE's downscale).
    pub size: (usize, usize),
    /// The VAE of a latent pipeline: the UNet denoises its latents, the batcher decodes them.
    pub vae: Option<Arc<diffuse_models::AutoencoderKL>>,
    /// The tokenizer and text encoder of a text-to-image pipeline: its requests need a
    /// `prompt`, which the batcher encodes.
    pub text: Option<Arc<PromptEncoder>>,
    pub batcher: Batcher,
}

impl ModelEntry {
    fn num_classes(&self) -> Option<usize> {
        self.model.num_classes()
    }

    /// What a request conditions the model with: `"text"` (a `prompt`), `"class"` (a
    /// `class_label`) or `"none"`.
    pub fn conditioning(&self) -> &'static str {
        if self.text.is_some() {
            "text"
        } else if self.model.is_class_conditional() {
            "class"
        } else {
            "none"
        }
    }
}

/// Everything the handlers share.
pub struct AppState {
    pub config: ServeConfig,
    pub models: BTreeMap<String, ModelEntry>,
    pub metrics: Arc<Metrics>,
    images: Mutex<VecDeque<(String, Vec<u8>)>>,
    next_id: AtomicU64,
    /// Images admitted and not yet finished or dropped ([`batcher::Admission`]).
    in_flight: Arc<AtomicUsize>,
}

/// How many generated PNGs are kept for `response_format: "url"`.
const KEPT_IMAGES: usize = 512;

impl AppState {
    pub fn new(config: ServeConfig, metrics: Arc<Metrics>) -> Self {
        AppState {
            config,
            models: BTreeMap::new(),
            metrics,
            images: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Images admitted and not yet done.
    pub fn in_flight_images(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Loads a pipeline or model (UNet, DiT) folder and starts its batcher; the id is the folder
    /// name.
    pub fn add_model(&mut self, dir: &std::path::Path, device: &Device) -> Result<String, Error> {
        // Prefer the EMA weights of a `diffuse train` output, as `diffuse sample` does.
        let pipe = Pipeline::load(dir, &LoadOptions::default(), device)?;
        let f = pipe.downscale();
        let (h, w) = pipe
            .sample_hw()
            .unwrap_or((DEFAULT_SIZE / f, DEFAULT_SIZE / f));
        let size = (h * f, w * f);
        let (default_steps, default_guidance) = (pipe.default_steps(), pipe.default_guidance());
        let default_guidance_interval = pipe.default_guidance_interval();
        let default_timesteps = pipe.default_timesteps().map(<[f64]>::to_vec);
        let Pipeline {
            net: model,
            vae,
            text,
            scheduler,
            model_scheduler,
            default_sampler,
            ..
        } = pipe;
        let vae = vae.map(Arc::new);
        let text = text.map(Arc::new);
        // A folder's name, or a hub id's NAME (its snapshot folder is named by a hash).
        let id = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .split('@')
                    .next()
                    .unwrap_or("model")
                    .to_string()
            })
            .unwrap_or_else(|| "model".into());
        if self.models.contains_key(&id) {
            return Err(Error::DuplicateId(id));
        }
        let model = Arc::new(model);
        let batcher = Batcher::start(
            model.clone(),
            vae.clone(),
            text.clone(),
            device.clone(),
            BatchConfig {
                max_batch: self.config.max_batch,
                max_wait: self.config.max_wait,
                queue: self.config.queue,
            },
            self.metrics.clone(),
        );
        self.models.insert(
            id.clone(),
            ModelEntry {
                id: id.clone(),
                model,
                scheduler,
                model_scheduler,
                default_sampler,
                default_steps,
                default_timesteps,
                default_guidance,
                default_guidance_interval,
                size,
                vae,
                text,
                batcher,
            },
        );
        Ok(id)
    }

    /// Stops every batcher after its queue drains.
    pub fn shutdown(&self) {
        for m in self.models.values() {
            m.batcher.shutdown();
        }
    }

    fn keep_image(&self, png: Vec<u8>) -> String {
        let id = format!("img-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut q = self.images.lock().expect("lock");
        if q.len() >= KEPT_IMAGES {
            q.pop_front();
        }
        q.push_back((id.clone(), png));
        id
    }
}

/// The service.
pub fn app(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let uploads = Router::new()
        .route("/v1/images/edits", post(edits))
        .route("/v1/images/variations", post(variations))
        .layer(DefaultBodyLimit::max(state.config.max_upload_bytes));
    Router::new()
        .route("/", get(index))
        .route("/v1/images/generations", post(generate))
        .route("/v1/images/{file}", get(kept_image))
        .route("/v1/models", get(list_models))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(limit))
        .merge(uploads)
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.models.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no models loaded"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ready", "models": s.models.keys().collect::<Vec<_>>()}))
            .into_response()
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn list_models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&s, &headers) {
        return e.into_response();
    }
    let data: Vec<Value> = s
        .models
        .values()
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "sample_size": [m.size.0, m.size.1],
                "in_channels": m.model.in_channels(),
                "network": m.model.config().class_name(),
                "latent": m.vae.is_some(),
                "class_conditional": m.model.is_class_conditional(),
                "conditioning": m.conditioning(),
                "num_classes": m.num_classes(),
                "scheduler": m.scheduler.get("_class_name"),
                "prediction_type": m.model_scheduler.prediction_type.name(),
                "objective": Objective::of(&m.model_scheduler).name(),
                "samplers": compat::compatible_samplers(Objective::of(&m.model_scheduler))
                    .iter()
                    .map(|c| json!({"name": c.sampler, "works": c.works(), "how": c.describe()}))
                    .collect::<Vec<_>>(),
                "default_sampler": m.default_sampler,
                "default_steps": m.default_steps,
                "default_guidance_scale": m.default_guidance,
                "default_guidance_interval": m.default_guidance_interval,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn kept_image(State(s): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let id = file.trim_end_matches(".png");
    let q = s.images.lock().expect("lock");
    match q.iter().find(|(k, _)| k == id) {
        Some((_, png)) => ([(header::CONTENT_TYPE, "image/png")], png.clone()).into_response(),
        None => {
            ApiError::new(StatusCode::NOT_FOUND, None, format!("no image {file}")).into_response()
        }
    }
}

fn check_key(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.config.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            None,
            "wrong API key".into(),
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            None,
            "missing API key: send `Authorization: Bearer KEY`".into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sets the job's cancel flag if the request future is dropped before it finishes.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

/// How a request body is read.
#[derive(Clone, Copy)]
enum Body {
    Json,
    Form(upload::Endpoint),
}

async fn generate(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&s, &headers, body, Body::Json).await
}

async fn edits(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&s, &headers, body, Body::Form(upload::Endpoint::Edits)).await
}

async fn variations(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&s, &headers, body, Body::Form(upload::Endpoint::Variations)).await
}

async fn answer(
    s: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: Body,
) -> Response {
    let started = Instant::now();
    // A body over the limit (or one that broke off) is the API's JSON error, counted in the
    // metrics like every other answer; axum's own rejection is plain text.
    let resp = match (body, check_key(s, headers)) {
        (_, Err(e)) => e.into_response(),
        (Ok(body), Ok(())) => {
            let req = match kind {
                Body::Json => request::parse(&body, &s.config),
                Body::Form(endpoint) => {
                    let ct = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok());
                    upload::parse(ct, body, &s.config, endpoint).await
                }
            };
            match req {
                Ok(req) => generate_inner(s, req, started).await,
                Err(e) => e.into_response(),
            }
        }
        (Err(e), Ok(())) => {
            let status = e.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                match kind {
                    Body::Json => format!(
                        "the body is over {} bytes (--max-body-bytes)",
                        s.config.max_body_bytes
                    ),
                    Body::Form(_) => format!(
                        "the form is over {} bytes (--max-upload-bytes); send a smaller image",
                        s.config.max_upload_bytes
                    ),
                }
            } else {
                format!("cannot read the body: {}", e.body_text())
            };
            ApiError::new(status, Some("body"), message).into_response()
        }
    };
    // Streams account for themselves when they end.
    if resp.headers().get(header::CONTENT_TYPE)
        != Some(&HeaderValue::from_static("text/event-stream"))
    {
        s.metrics.request(resp.status().as_u16(), started.elapsed());
    }
    resp
}

async fn generate_inner(s: &Arc<AppState>, req: request::Request, started: Instant) -> Response {
    let model_id = if req.model.is_empty() && s.models.len() == 1 {
        s.models.keys().next().cloned().unwrap_or_default()
    } else {
        req.model.clone()
    };
    let Some(entry) = s.models.get(&model_id) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            Some("model"),
            format!(
                "unknown model {:?}; available: {}",
                req.model,
                s.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
        .into_response();
    };
    let planned = match request::plan(&req, entry, &s.config) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = request::check_work(&req, &planned, entry, &s.config) {
        return e.into_response();
    }
    let Some(admission) = Admission::take(&s.in_flight, req.n, s.config.max_in_flight_images)
    else {
        return busy(format!(
            "{} images are in flight, the most this server takes is {}; retry shortly",
            s.in_flight_images(),
            s.config.max_in_flight_images
        ));
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (ptx, prx) = if req.stream {
        let (a, b) = tokio::sync::mpsc::unbounded_channel();
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let job = Job {
        n: req.n,
        seed: req.seed,
        labels: planned.labels,
        prompt: planned.prompt,
        guidance_scale: planned.guidance_scale,
        guidance_interval: planned.guidance_interval,
        null_class: planned.null_class,
        sampler: planned.sampler,
        size: planned.size,
        cancel: cancel.clone(),
        progress: ptx,
        reply: tx,
        enqueued: Instant::now(),
        admission,
        edit: planned.edit,
    };
    if let Err(why) = entry.batcher.submit(job) {
        return match why {
            SubmitError::QueueFull => busy("the queue is full; retry shortly".into()),
            SubmitError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the server is shutting down".into(),
            )
            .into_response(),
        };
    }
    let mut guard = CancelOnDrop {
        flag: cancel,
        armed: true,
    };
    let seed = req.seed;
    let format = req.response_format.clone();
    match prx {
        None => {
            let result = rx.await;
            guard.armed = false;
            match result {
                Ok(Ok(r)) => Json(response_body(s, r, seed, &format)).into_response(),
                Ok(Err(e)) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string())
                    .into_response(),
                Err(_) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    None,
                    "the job was dropped".into(),
                )
                .into_response(),
            }
        }
        Some(mut progress) => {
            let s = s.clone();
            let (etx, erx) = tokio::sync::mpsc::channel::<Event>(16);
            // The task owns the cancel guard: when the client goes away the stream is dropped,
            // the task aborted, and the guard cancels the job.
            let task = tokio::spawn(async move {
                let mut guard = guard;
                while let Some((i, n)) = progress.recv().await {
                    let ev = Event::default()
                        .event("progress")
                        .data(json!({"step": i, "total": n}).to_string());
                    let _ = etx.send(ev).await;
                }
                let (status, body) = match rx.await {
                    Ok(Ok(r)) => (200u16, response_body(&s, r, seed, &format)),
                    Ok(Err(e)) => (500, json!({"error": {"message": e.to_string()}})),
                    Err(_) => (500, json!({"error": {"message": "the job was dropped"}})),
                };
                guard.armed = false;
                s.metrics.request(status, started.elapsed());
                let name = if status == 200 { "result" } else { "error" };
                let _ = etx
                    .send(Event::default().event(name).data(body.to_string()))
                    .await;
            });
            let stream = futures_util::stream::unfold(
                (erx, AbortOnDrop(task)),
                |(mut erx, abort)| async move {
                    erx.recv()
                        .await
                        .map(|e| (Ok::<_, std::convert::Infallible>(e), (erx, abort)))
                },
            );
            Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
    }
}

/// A 429 with `Retry-After: 1`.
fn busy(message: String) -> Response {
    let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, None, message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Aborts the producing task when the SSE stream (the client) goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn response_body(s: &AppState, r: JobResult, seed: u64, format: &str) -> Value {
    let images = diffuse_data::image_io::tensor_to_images(&r.images).unwrap_or_default();
    let data: Vec<Value> = images
        .into_iter()
        .map(|img| {
            let mut png = Vec::new();
            let _ = img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png);
            if format == "url" {
                json!({"url": format!("/v1/images/{}.png", s.keep_image(png))})
            } else {
                json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(&png)})
            }
        })
        .collect();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "created": created,
        "seed": seed,
        "data": data,
        "timings": {"queue_ms": r.queue_ms, "compute_ms": r.compute_ms, "batch_images": r.batch_images},
    })
}

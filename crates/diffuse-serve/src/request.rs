//! The generation request: parsed by hand from JSON so that every error names its field.

use crate::{ModelEntry, ServeConfig};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use diffuse_core::compat::{self, CompatError};
use diffuse_core::sampler::{Sampler, SamplerOptions};
use serde_json::{json, Map, Value};

/// An error answer: `{"error": {"message", "field", "code"}}`, and `"samplers"` (the ones that
/// work for the model) when the sampler was refused.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
    pub samplers: Option<Vec<&'static str>>,
}

impl ApiError {
    pub fn new(status: StatusCode, field: Option<&str>, message: String) -> Self {
        ApiError {
            status,
            field: field.map(String::from),
            message,
            samplers: None,
        }
    }

    /// A 400 on `sampler`, listing the samplers that work.
    fn sampler(e: CompatError) -> Self {
        ApiError {
            samplers: Some(e.working().to_vec()),
            ..ApiError::bad("sampler", e.to_string())
        }
    }

    fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, Some(field), message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {
            "message": self.message,
            "field": self.field,
            "code": self.status.as_u16(),
        }});
        if let Some(samplers) = self.samplers {
            body["error"]["samplers"] = json!(samplers);
        }
        (self.status, Json(body)).into_response()
    }
}

/// A validated request (before the model-specific checks).
#[derive(Debug, Clone)]
pub struct Request {
    pub model: String,
    pub n: usize,
    pub class_label: Option<u32>,
    /// Given guidance; default: the model's recorded scale (1 for an unconditional model).
    pub guidance_scale: Option<f64>,
    /// Given sampler; default: the model's own scheduler.
    pub sampler: Option<String>,
    /// Given steps; default: the model's scheduler config's `num_inference_steps` (a distilled
    /// student's), else 50, at most `max_steps`.
    pub steps: Option<usize>,
    /// The server's step limit (caps the default).
    pub max_steps: usize,
    pub eta: f64,
    pub seed: u64,
    pub response_format: String,
    pub stream: bool,
    pub size: Option<usize>,
}

const FIELDS: [&str; 11] = [
    "model",
    "n",
    "class_label",
    "guidance_scale",
    "sampler",
    "steps",
    "eta",
    "seed",
    "response_format",
    "stream",
    "size",
];

fn uint(m: &Map<String, Value>, k: &str, default: u64, lo: u64, hi: u64) -> Result<u64, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(x),
            Some(x) => Err(ApiError::bad(
                k,
                format!("`{k}` must be in {lo}..={hi}, got {x}"),
            )),
            None => Err(ApiError::bad(
                k,
                format!("`{k}` must be a non-negative integer, got {v}"),
            )),
        },
    }
}

fn number(
    m: &Map<String, Value>,
    k: &str,
    default: f64,
    lo: f64,
    hi: f64,
) -> Result<f64, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
            _ => Err(ApiError::bad(
                k,
                format!("`{k}` must be a number in [{lo}, {hi}], got {v}"),
            )),
        },
    }
}

fn string(m: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad(k, format!("`{k}` must be a string, got {v}"))),
    }
}

/// Parses and range-checks the body.
pub fn parse(body: &[u8], cfg: &ServeConfig) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("invalid JSON: {e}")))?;
    let m = v
        .as_object()
        .ok_or_else(|| ApiError::bad("body", "the body must be a JSON object"))?;
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad(
            k,
            format!("unknown field `{k}`; allowed: {}", FIELDS.join(", ")),
        ));
    }
    let response_format = string(m, "response_format")?.unwrap_or_else(|| "b64_json".into());
    if !matches!(response_format.as_str(), "b64_json" | "url") {
        return Err(ApiError::bad(
            "response_format",
            format!("`response_format` must be \"b64_json\" or \"url\", got {response_format:?}"),
        ));
    }
    let stream = match m.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::bad(
                "stream",
                format!("`stream` must be true or false, got {v}"),
            ))
        }
    };
    let seed = match m.get("seed") {
        None | Some(Value::Null) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ 0x9E37_79B9_7F4A_7C15
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::bad(
                "seed",
                format!("`seed` must be a non-negative integer, got {v}"),
            )
        })?,
    };
    Ok(Request {
        model: string(m, "model")?.unwrap_or_default(),
        n: uint(m, "n", 1, 1, cfg.max_n as u64)? as usize,
        class_label: match m.get("class_label") {
            None | Some(Value::Null) => None,
            Some(_) => Some(uint(m, "class_label", 0, 0, u32::MAX as u64)? as u32),
        },
        guidance_scale: match m.get("guidance_scale") {
            None | Some(Value::Null) => None,
            Some(_) => Some(number(m, "guidance_scale", 1.0, 0.0, 100.0)?),
        },
        sampler: string(m, "sampler")?,
        steps: match m.get("steps") {
            None | Some(Value::Null) => None,
            Some(_) => Some(uint(m, "steps", 1, 1, cfg.max_steps as u64)? as usize),
        },
        max_steps: cfg.max_steps,
        eta: number(m, "eta", 0.0, 0.0, 10.0)?,
        seed,
        response_format,
        stream,
        size: match m.get("size") {
            None | Some(Value::Null) => None,
            Some(_) => Some(uint(m, "size", 0, 1, cfg.max_size as u64)? as usize),
        },
    })
}

/// The model-specific part: sampler plan, labels, guidance, size (of what the UNet denoises).
pub struct Planned {
    pub sampler: Sampler,
    pub guidance_scale: f64,
    pub labels: Option<Vec<u32>>,
    pub null_class: u32,
    pub size: (usize, usize),
}

pub fn plan(req: &Request, entry: &ModelEntry) -> Result<Planned, ApiError> {
    let name = req.sampler.as_deref().unwrap_or(entry.default_sampler);
    let config =
        compat::resolve_sampler(name, &entry.model_scheduler).map_err(ApiError::sampler)?;
    let steps = req
        .steps
        .unwrap_or_else(|| entry.default_steps.min(req.max_steps).max(1));
    let sampler = Sampler::with_options(
        &config,
        steps,
        SamplerOptions {
            eta: req.eta,
            ..Default::default()
        },
    )
    .map_err(|e| ApiError::bad("steps", e.to_string()))?;
    let classes = entry.num_classes();
    let conditional = entry.model.is_class_conditional();
    let labels = match (req.class_label, conditional) {
        (Some(l), true) => {
            if let Some(k) = classes {
                if l as usize >= k {
                    return Err(ApiError::bad(
                        "class_label",
                        format!("`class_label` {l} out of range: the model has classes 0..{k}"),
                    ));
                }
            }
            Some(vec![l; req.n])
        }
        (None, true) => {
            return Err(ApiError::bad(
                "class_label",
                "this model is class-conditional: `class_label` is required",
            ))
        }
        (Some(_), false) => {
            return Err(ApiError::bad(
                "class_label",
                "this model is not class-conditional: omit `class_label`",
            ))
        }
        (None, false) => None,
    };
    if req.guidance_scale.is_some_and(|g| g != 1.0) && classes.is_none() {
        return Err(ApiError::bad(
            "guidance_scale",
            "classifier-free guidance needs a class-conditional model with a class table",
        ));
    }
    // Image size; the batcher denoises at latent size (image / f) for a latent pipeline.
    let f = entry.vae.as_ref().map_or(1, |v| v.config().downscale());
    let (h, w) = match req.size {
        Some(s) => {
            let m = entry.model.size_multiple() * f;
            if s % m != 0 {
                return Err(ApiError::bad(
                    "size",
                    format!("`size` must be a multiple of {m} for this model, got {s}"),
                ));
            }
            (s, s)
        }
        None => entry.size,
    };
    let size = (h / f, w / f);
    Ok(Planned {
        sampler,
        guidance_scale: match classes {
            Some(_) => req.guidance_scale.unwrap_or(entry.default_guidance),
            None => 1.0,
        },
        labels,
        null_class: classes.map(|k| k as u32 - 1).unwrap_or(0),
        size,
    })
}

/// Refuses a request whose work — n × height × width × model calls, twice that with
/// classifier-free guidance — is over `cfg.max_request_pixel_steps`; its memory and time grow
/// with it.
pub fn check_work(
    req: &Request,
    planned: &Planned,
    entry: &ModelEntry,
    cfg: &ServeConfig,
) -> Result<(), ApiError> {
    let f = entry.vae.as_ref().map_or(1, |v| v.config().downscale());
    let (h, w) = (planned.size.0 * f, planned.size.1 * f);
    let calls = planned.sampler.len();
    let guided = if planned.guidance_scale != 1.0 { 2 } else { 1 };
    let work = (req.n * h * w * calls * guided) as u64;
    if work <= cfg.max_request_pixel_steps {
        return Ok(());
    }
    let cfg_note = if guided == 2 { " × 2 (guidance)" } else { "" };
    Err(ApiError::bad(
        "n",
        format!(
            "the request is too large: n × size² × steps = {} × {h}×{w} × {calls}{cfg_note} = {work} pixel-steps, over this server's limit of {} (--max-request-pixel-steps); ask for fewer images, fewer steps or a smaller size",
            req.n, cfg.max_request_pixel_steps
        ),
    ))
}

//! The generation request: parsed by hand from JSON (or, for edits, from the form fields of
//! [`crate::upload`]) so that every error names its field.

use crate::batcher::{JobEdit, JobPrompt};
use crate::{ModelEntry, ServeConfig};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use diffuse_core::compat::{self, CompatError};
use diffuse_core::denoiser::GuidanceInterval;
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

    pub(crate) fn bad(field: &str, message: impl Into<String>) -> Self {
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
    /// Text-to-image: the prompt (required there; "" is a prompt) and the negative prompt
    /// (the unconditional half of guidance; default "").
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// Text-to-image: diffusers' `clip_skip` (default 0, the text encoder's last layer).
    pub clip_skip: Option<usize>,
    /// Given guidance; default: the model's recorded scale (7.5 for a text-to-image model, 1
    /// for an unconditional one).
    pub guidance_scale: Option<f64>,
    /// Given interval of noise levels to guide at (`Some(None)`: every step, from JSON null);
    /// default: the model's recorded one.
    pub guidance_interval: Option<Option<GuidanceInterval>>,
    /// Given sampler; default: the model's own scheduler.
    pub sampler: Option<String>,
    /// Given steps; default: the model's scheduler config's `num_inference_steps` (a distilled
    /// student's), else 50, at most `max_steps`.
    pub steps: Option<usize>,
    /// The server's step limit (caps the default).
    pub max_steps: usize,
    /// Given timesteps, noisiest first (diffusers' `set_timesteps(timesteps=…)`): the plan
    /// instead of `steps` evenly chosen ones; only LCMScheduler and FlowMatch Euler take them.
    pub timesteps: Option<Vec<f64>>,
    pub eta: f64,
    /// Consistency γ-sampling (LCM, stochastic FlowMatch Euler), in [0, 1]; default 1.
    pub gamma: f64,
    pub seed: u64,
    pub response_format: String,
    pub stream: bool,
    pub size: Option<usize>,
    /// `/v1/images/edits` and `/variations`: the image to start from.
    pub edit: Option<EditUpload>,
}

/// An uploaded image to edit: its file bytes, a mask's (white: regenerate), and how much of
/// the plan runs from it (0 returns it, 1 starts from pure noise).
#[derive(Debug, Clone)]
pub struct EditUpload {
    pub image: Vec<u8>,
    pub mask: Option<Vec<u8>>,
    pub strength: f64,
}

/// The fields of `POST /v1/images/generations`; the edit endpoints add [`EDIT_FIELDS`].
pub const FIELDS: [&str; 17] = [
    "model",
    "n",
    "class_label",
    "prompt",
    "negative_prompt",
    "clip_skip",
    "guidance_scale",
    "guidance_interval",
    "sampler",
    "steps",
    "timesteps",
    "eta",
    "gamma",
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

/// `timesteps`: a non-empty array of at most `max` finite, non-negative numbers (the sampler
/// checks the rest: order, range, whether its class takes them at all).
fn timesteps(m: &Map<String, Value>, max: usize) -> Result<Option<Vec<f64>>, ApiError> {
    let k = "timesteps";
    let v = match m.get(k) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let shape = || {
        format!("`{k}` must be an array of numbers, noisiest first (e.g. [999, 759, 499, 259]), got {v}")
    };
    let items = v.as_array().ok_or_else(|| ApiError::bad(k, shape()))?;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::bad(
            k,
            format!("`{k}` must hold 1..={max} timesteps, got {}", items.len()),
        ));
    }
    items
        .iter()
        .map(|x| match x.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Ok(t),
            _ => Err(ApiError::bad(
                k,
                format!("`{k}` must hold non-negative numbers, got {x}"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn string(m: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::bad(k, format!("`{k}` must be a string, got {v}"))),
    }
}

/// The longest `prompt` or `negative_prompt`, in characters: the text encoder reads only its
/// first tokens (77 for Stable Diffusion), and a client must not make the server tokenize
/// megabytes.
pub const MAX_PROMPT_CHARS: usize = 1000;

/// A prompt field: a string of at most [`MAX_PROMPT_CHARS`] characters.
fn prompt(m: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    let p = string(m, k)?;
    match p.as_ref().map(|s| s.chars().count()) {
        Some(n) if n > MAX_PROMPT_CHARS => Err(ApiError::bad(
            k,
            format!(
                "`{k}` has {n} characters, over the limit of {MAX_PROMPT_CHARS}: the text encoder reads only its first tokens (77 for Stable Diffusion) anyway; shorten it"
            ),
        )),
        _ => Ok(p),
    }
}

/// What the edit endpoints take besides [`FIELDS`] (`mask` on `/edits` only).
pub const EDIT_FIELDS: [&str; 3] = ["image", "mask", "strength"];

/// Parses and range-checks the body.
pub fn parse(body: &[u8], cfg: &ServeConfig) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("invalid JSON: {e}")))?;
    let m = v
        .as_object()
        .ok_or_else(|| ApiError::bad("body", "the body must be a JSON object"))?;
    check_fields(m.keys().map(String::as_str), &FIELDS)?;
    parse_fields(m, cfg)
}

/// A 400 naming the first of `keys` not in `allowed`.
pub(crate) fn check_fields<'a>(
    mut keys: impl Iterator<Item = &'a str>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match keys.find(|k| !allowed.contains(k)) {
        Some(k) => Err(ApiError::bad(
            k,
            format!("unknown field `{k}`; allowed: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The checked fields of [`FIELDS`] (others are ignored: the caller checked them).
pub(crate) fn parse_fields(m: &Map<String, Value>, cfg: &ServeConfig) -> Result<Request, ApiError> {
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
    let steps = match m.get("steps") {
        None | Some(Value::Null) => None,
        Some(_) => Some(uint(m, "steps", 1, 1, cfg.max_steps as u64)? as usize),
    };
    let timesteps = timesteps(m, cfg.max_steps)?;
    if steps.is_some() && timesteps.is_some() {
        return Err(ApiError::bad(
            "timesteps",
            "give `steps` or `timesteps`, not both: `timesteps` sets the plan, its length the steps",
        ));
    }
    Ok(Request {
        model: string(m, "model")?.unwrap_or_default(),
        n: uint(m, "n", 1, 1, cfg.max_n as u64)? as usize,
        class_label: match m.get("class_label") {
            None | Some(Value::Null) => None,
            Some(_) => Some(uint(m, "class_label", 0, 0, u32::MAX as u64)? as u32),
        },
        prompt: prompt(m, "prompt")?,
        negative_prompt: prompt(m, "negative_prompt")?,
        clip_skip: match m.get("clip_skip") {
            None | Some(Value::Null) => None,
            Some(_) => Some(uint(m, "clip_skip", 0, 0, u32::MAX as u64)? as usize),
        },
        guidance_scale: match m.get("guidance_scale") {
            None | Some(Value::Null) => None,
            Some(_) => Some(number(m, "guidance_scale", 1.0, 0.0, 100.0)?),
        },
        guidance_interval: match m.get("guidance_interval") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => Some(Some(serde_json::from_value(v.clone()).map_err(|e| {
                ApiError::bad(
                    "guidance_interval",
                    format!("`guidance_interval` must be [σ_lo, σ_hi] with 0 ≤ σ_lo < σ_hi, or null: {e}"),
                )
            })?)),
        },
        sampler: string(m, "sampler")?,
        steps,
        max_steps: cfg.max_steps,
        timesteps,
        eta: number(m, "eta", 0.0, 0.0, 10.0)?,
        gamma: number(m, "gamma", 1.0, 0.0, 1.0)?,
        seed,
        response_format,
        stream,
        size: match m.get("size") {
            None | Some(Value::Null) => None,
            Some(_) => Some(uint(m, "size", 0, 1, cfg.max_size as u64)? as usize),
        },
        edit: None,
    })
}

/// `strength` of an edit: default 0.8 (diffusers' img2img), 1 with a mask (its inpainting).
pub(crate) fn strength(m: &Map<String, Value>, masked: bool) -> Result<f64, ApiError> {
    number(m, "strength", if masked { 1.0 } else { 0.8 }, 0.0, 1.0)
}

/// The model-specific part: sampler plan, labels or prompts, guidance, size (of what the UNet
/// denoises), and an edit's decoded image.
pub struct Planned {
    pub sampler: Sampler,
    pub guidance_scale: f64,
    pub guidance_interval: Option<GuidanceInterval>,
    pub labels: Option<Vec<u32>>,
    /// A text-to-image model's prompts (encoded by the batcher when the job starts).
    pub prompt: Option<JobPrompt>,
    pub null_class: u32,
    pub size: (usize, usize),
    pub edit: Option<JobEdit>,
}

impl Planned {
    /// Model calls per image (twice that with guidance): what an edit runs of the plan.
    pub fn calls(&self) -> usize {
        crate::batcher::calls_left(&self.sampler, self.edit.as_ref())
    }
}

pub fn plan(req: &Request, entry: &ModelEntry, cfg: &ServeConfig) -> Result<Planned, ApiError> {
    let name = req.sampler.as_deref().unwrap_or(entry.default_sampler);
    let config =
        compat::resolve_sampler(name, &entry.model_scheduler).map_err(ApiError::sampler)?;
    let options = SamplerOptions {
        eta: req.eta,
        gamma: req.gamma,
        ..Default::default()
    };
    // A request without sampler, steps and timesteps gets the model's recorded timesteps.
    let recorded = match (&req.sampler, req.steps) {
        (None, None) => entry.default_timesteps.as_ref(),
        _ => None,
    };
    let sampler = match req.timesteps.as_ref().or(recorded) {
        // The plan is the given timesteps (a class that takes none says which do).
        Some(ts) => Sampler::with_timesteps(&config, ts, options)
            .map_err(|e| ApiError::bad("timesteps", e.to_string()))?,
        None => {
            let steps = req
                .steps
                .unwrap_or_else(|| entry.default_steps.min(req.max_steps).max(1));
            Sampler::with_options(&config, steps, options)
                .map_err(|e| ApiError::bad("steps", e.to_string()))?
        }
    };
    let classes = entry.num_classes();
    // The last class is the null ("unconditional") one.
    let null_class = classes.map(|k| k as u32 - 1).unwrap_or(0);
    let conditional = entry.model.is_class_conditional();
    // A text-to-image model takes a prompt ("" is one) and no class; the others no prompt.
    let text = entry.text.is_some();
    if text && req.class_label.is_some() {
        return Err(ApiError::bad(
            "class_label",
            "this model is text-to-image: it takes a `prompt`, not a `class_label`",
        ));
    }
    if text && req.prompt.is_none() {
        return Err(ApiError::bad(
            "prompt",
            "this model is text-to-image: `prompt` is required (\"\" is a valid prompt)",
        ));
    }
    if !text {
        let takes = if conditional {
            "it takes a `class_label`"
        } else {
            "it is unconditional"
        };
        for (k, given) in [
            ("prompt", &req.prompt),
            ("negative_prompt", &req.negative_prompt),
        ] {
            if given.is_some() {
                return Err(ApiError::bad(
                    k,
                    format!("this model is not text-to-image ({takes}): omit `{k}`"),
                ));
            }
        }
    }
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
        // An edit without a class is guided by its image alone: the null class, unguided.
        (None, true) if req.edit.is_some() && classes.is_some() => {
            if req.guidance_scale.is_some_and(|g| g != 1.0) {
                return Err(ApiError::bad(
                    "guidance_scale",
                    "guidance pulls towards a class: give `class_label` too",
                ));
            }
            Some(vec![null_class; req.n])
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
    if req.guidance_scale.is_some_and(|g| g != 1.0) && classes.is_none() && !text {
        return Err(ApiError::bad(
            "guidance_scale",
            "classifier-free guidance needs a text-to-image model or a class-conditional one with a class table",
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
    let edit = match &req.edit {
        Some(up) => Some(decode_edit(up, &sampler, entry, (h, w), cfg)?),
        None => None,
    };
    let guidance_scale = match (classes, req.class_label, &edit) {
        _ if text => req.guidance_scale.unwrap_or(entry.default_guidance),
        (None, _, _) => 1.0,
        (Some(_), None, Some(_)) => 1.0,
        (Some(_), _, _) => req.guidance_scale.unwrap_or(entry.default_guidance),
    };
    if req.negative_prompt.is_some() && guidance_scale == 1.0 {
        return Err(ApiError::bad(
            "negative_prompt",
            "`negative_prompt` steers classifier-free guidance, which is off at `guidance_scale` 1: give another scale or omit `negative_prompt`",
        ));
    }
    let clip_skip = req.clip_skip.unwrap_or(0);
    match &entry.text {
        None if req.clip_skip.is_some() => {
            return Err(ApiError::bad(
                "clip_skip",
                "`clip_skip` chooses the text encoder's layer: this model is not text-to-image",
            ))
        }
        Some(t) if clip_skip > t.layers() => {
            return Err(ApiError::bad(
                "clip_skip",
                format!(
                    "`clip_skip` {clip_skip}: the text encoder has {} layers; use 0..={}",
                    t.layers(),
                    t.layers()
                ),
            ))
        }
        _ => {}
    }
    let prompt = req.prompt.as_ref().filter(|_| text).map(|p| JobPrompt {
        prompt: p.clone(),
        negative: req.negative_prompt.clone().unwrap_or_default(),
        clip_skip,
    });
    Ok(Planned {
        sampler,
        guidance_scale,
        guidance_interval: req
            .guidance_interval
            .unwrap_or(entry.default_guidance_interval),
        labels,
        prompt,
        null_class,
        size,
        edit,
    })
}

/// The uploaded image (and mask) of a request for `entry` at `h × w` pixels, and the call of
/// the plan its strength starts at.
fn decode_edit(
    up: &EditUpload,
    sampler: &Sampler,
    entry: &ModelEntry,
    (h, w): (usize, usize),
    cfg: &ServeConfig,
) -> Result<JobEdit, ApiError> {
    if h != w {
        return Err(ApiError::bad(
            "size",
            format!("editing needs a square image size; this model's is {h}×{w}"),
        ));
    }
    let channels = match &entry.vae {
        Some(v) => v.config().in_channels,
        None => entry.model.in_channels(),
    };
    let (images, mask) = decode_upload(up, channels, h, cfg.max_size)?;
    let begin = sampler
        .begin_index(up.strength)
        .map_err(|e| ApiError::bad("strength", e.to_string()))?;
    Ok(JobEdit {
        images,
        mask,
        begin,
    })
}

/// The uploaded image `[1, channels, size, size]` in [−1, 1] and mask `[1, 1, size, size]` of
/// 0/1, decoded, converted and fitted as `data` does (centre crop). A file over `max_side` on a
/// side, one that does not decode, or a mask of another size than the image is a 400 naming
/// its field.
pub fn decode_upload(
    up: &EditUpload,
    channels: usize,
    size: usize,
    max_side: usize,
) -> Result<(candle_core::Tensor, Option<candle_core::Tensor>), ApiError> {
    use diffuse_data::image_io;
    use diffuse_data::transform::Fit;
    let max_side = u32::try_from(max_side).unwrap_or(u32::MAX);
    let decode = |field: &str, bytes: &[u8]| {
        image_io::decode_within(bytes, std::path::Path::new(field), max_side)
            .map_err(|e| ApiError::bad(field, format!("`{field}`: {}", strip_path(field, &e))))
    };
    let internal = |field: &str, e: diffuse_data::Error| ApiError::bad(field, e.to_string());
    let image = decode("image", &up.image)?;
    let cpu = candle_core::Device::Cpu;
    let (images, _) = image_io::fit_image(&image, channels, size, Fit::CenterCrop, &cpu)
        .map_err(|e| internal("image", e))?;
    let Some(bytes) = &up.mask else {
        return Ok((images, None));
    };
    let m = decode("mask", bytes)?;
    if (m.width(), m.height()) != (image.width(), image.height()) {
        return Err(ApiError::bad(
            "mask",
            format!(
                "`mask` is {}×{}, the image {}×{}: give a mask of the image's size",
                m.width(),
                m.height(),
                image.width(),
                image.height()
            ),
        ));
    }
    let (mask, _) =
        image_io::mask_of(&m, size, Fit::CenterCrop, &cpu).map_err(|e| internal("mask", e))?;
    Ok((images, Some(mask)))
}

/// An image error without its made-up path (the field is named instead).
fn strip_path(field: &str, e: &diffuse_data::Error) -> String {
    let s = e.to_string();
    s.strip_prefix(&format!("{field}: "))
        .unwrap_or(&s)
        .to_string()
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
    let calls = planned.calls();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> Result<Request, ApiError> {
        parse(body.to_string().as_bytes(), &ServeConfig::default())
    }

    #[test]
    fn prompts_are_strings_of_bounded_length() {
        let r = parsed(json!({"prompt": "", "negative_prompt": "blurry"})).unwrap();
        assert_eq!(
            (r.prompt.as_deref(), r.negative_prompt.as_deref()),
            (Some(""), Some("blurry"))
        );
        let r = parsed(json!({"prompt": null})).unwrap();
        assert_eq!(r.prompt, None);
        let field = |r: Result<Request, ApiError>| r.unwrap_err().field.unwrap();
        assert_eq!(field(parsed(json!({"prompt": 3}))), "prompt");
        assert_eq!(
            field(parsed(json!({"negative_prompt": ["a"]}))),
            "negative_prompt"
        );
        // The limit counts characters, not bytes.
        let at = "é".repeat(MAX_PROMPT_CHARS);
        assert!(parsed(json!({"prompt": at})).is_ok());
        let e = parsed(json!({"negative_prompt": at + "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("negative_prompt"));
        assert!(e.message.contains("1001 characters"), "{}", e.message);
    }
}

//! `CLIPTextModel`, transformers `src/transformers/models/clip/modeling_clip.py`
//! (`CLIPTextTransformer`), with `CLIPTextConfig`'s keys and transformers' weight names: the
//! text encoder of Stable Diffusion (SD 1.x: quick_gelu, 12 layers; SD 2.x: gelu, 23 layers).
//!
//! ```text
//! input_ids [b, L] ─ token_embedding + position_embedding[0..L]        → h [b, L, d]
//!   └ N × encoder.layers.i (pre-LN):
//!       h += out_proj(attn(q_proj, k_proj, v_proj of layer_norm1(h)))    causal (+ padding) mask
//!       h += fc2(act(fc1(layer_norm2(h))))
//!   └ last_hidden_state = final_layer_norm(h)
//!   └ pooler_output = last_hidden_state at the eos token of each row
//! ```
//!
//! `hidden_states` (when asked) are transformers' tuple: the embeddings, then each layer's
//! output, none of them through `final_layer_norm`; SD's "clip skip" takes
//! `final_layer_norm(hidden_states[-(k + 1)])` ([`ClipTextModel::prompt_embeds`]).
//! LayerNorm ([`ops::layer_norm`]), the softmax ([`ops::attention_with_bias`]) and every
//! activation are candle ops with a backward, so the model trains.

use crate::config::{key_error, parse};
use crate::ops;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const CONFIG_NAME: &str = "config.json";
pub const WEIGHTS_NAME: &str = "model.safetensors";
/// `.bin` weights of a folder saved with `safe_serialization=False`.
pub const BIN_WEIGHTS_NAME: &str = "pytorch_model.bin";
/// `model_type` of a `CLIPTextConfig`.
pub const MODEL_TYPE: &str = "clip_text_model";
/// `architectures` transformers writes for a `CLIPTextModel`.
pub const ARCHITECTURE: &str = "CLIPTextModel";
/// Prefix of every weight name.
const PREFIX: &str = "text_model";

/// `hidden_act` of the MLP (transformers' `ACT2FN` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// x · σ(1.702 x): OpenAI CLIP (SD 1.x).
    #[default]
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP (SD 2.x).
    Gelu,
    /// GELU, tanh approximation.
    GeluNew,
    /// GELU, tanh approximation (torch's `approximate="tanh"`).
    GeluPytorchTanh,
    /// GELU, tanh approximation (the same formula, factored).
    GeluFast,
    Relu,
    Silu,
    Swish,
}

impl HiddenAct {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            HiddenAct::QuickGelu => {
                // σ(z) = 1 / (1 + e^−z), composed so that it has a backward.
                let s = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
                (x * s)?
            }
            HiddenAct::Gelu => x.gelu_erf()?,
            HiddenAct::GeluNew | HiddenAct::GeluPytorchTanh | HiddenAct::GeluFast => x.gelu()?,
            HiddenAct::Relu => x.relu()?,
            HiddenAct::Silu | HiddenAct::Swish => x.silu()?,
        })
    }
}

/// transformers' `CLIPTextConfig` as `config.json` holds it. A missing key takes transformers'
/// default ([`ClipTextConfig::default`]: OpenAI CLIP ViT-B/32's text tower); unknown keys
/// (`transformers_version`, `torch_dtype`, …) are kept and written back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Width of `CLIPTextModelWithProjection`'s projection; unused by `CLIPTextModel`.
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The longest input (77 for CLIP).
    pub max_position_embeddings: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// Accepted for compatibility; not applied (inference, and training as SD trains it).
    pub attention_dropout: f64,
    pub initializer_range: f64,
    /// Scales every init std ([`seeded_init`]).
    pub initializer_factor: f64,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    /// The pooled token: the first `eos_token_id` of each row, or — for the legacy value 2 of
    /// old OpenAI configs — the row's largest id (see [`ClipTextModel::forward`]).
    pub eos_token_id: u32,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for ClipTextConfig {
    /// `CLIPTextConfig.__init__`'s defaults.
    fn default() -> Self {
        ClipTextConfig {
            architectures: Some(vec![ARCHITECTURE.into()]),
            model_type: MODEL_TYPE.into(),
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
            initializer_range: 0.02,
            initializer_factor: 1.0,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: 49407,
            extra: Map::new(),
        }
    }
}

impl ClipTextConfig {
    /// Parses `config.json` text and validates it; errors name the key.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: ClipTextConfig = parse(text, "CLIPTextModel", &[ARCHITECTURE])?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as transformers writes it (known keys, then the kept unknown ones).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks every value diffuse relies on; errors name the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(key_error(key, msg));
        if self.model_type == "clip" {
            return bad(
                "model_type",
                "\"clip\" is a whole CLIPConfig (text and vision towers); give the folder of a \
                 CLIPTextModel (model_type \"clip_text_model\"), as Stable Diffusion's \
                 text_encoder/"
                    .into(),
            );
        }
        if self.model_type != MODEL_TYPE {
            return bad(
                "model_type",
                format!(
                    "{:?} is not a CLIP text model; allowed: {MODEL_TYPE}",
                    self.model_type
                ),
            );
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return bad("layer_norm_eps", "must be positive".into());
        }
        Ok(())
    }
}

/// What [`ClipTextModel::forward_with`] returns (transformers' `BaseModelOutputWithPooling`).
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `[b, L, d]`, through `final_layer_norm`: SD's prompt embeddings.
    pub last_hidden_state: Tensor,
    /// `[b, d]`: `last_hidden_state` at each row's eos token.
    pub pooler_output: Tensor,
    /// When asked: `num_hidden_layers + 1` tensors `[b, L, d]`, the embeddings then each
    /// layer's output (no final LayerNorm), as transformers' `hidden_states`.
    pub hidden_states: Option<Vec<Tensor>>,
}

/// LayerNorm weight and bias.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Norm {
    fn new(d: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Norm {
            weight: vb.get_with_hints(d, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(ops::layer_norm(x, eps, Some((&self.weight, &self.bias)))?)
    }
}

/// `CLIPEncoderLayer`: pre-LN self-attention and MLP, each with a residual.
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    pub(crate) layer_norm1: Norm,
    pub(crate) q_proj: candle_nn::Linear,
    pub(crate) k_proj: candle_nn::Linear,
    pub(crate) v_proj: candle_nn::Linear,
    pub(crate) out_proj: candle_nn::Linear,
    pub(crate) layer_norm2: Norm,
    pub(crate) fc1: candle_nn::Linear,
    pub(crate) fc2: candle_nn::Linear,
}

impl EncoderLayer {
    fn new(c: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = c.hidden_size;
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(EncoderLayer {
            layer_norm1: Norm::new(d, vb.pp("layer_norm1"))?,
            q_proj: candle_nn::linear(d, d, attn.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, attn.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, attn.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, attn.pp("out_proj"))?,
            layer_norm2: Norm::new(d, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, c.intermediate_size, mlp.pp("fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, d, mlp.pp("fc2"))?,
        })
    }

    /// `x`: [b, L, d]; `bias`: additive attention mask broadcasting to [b, heads, L, L].
    fn forward(&self, x: &Tensor, bias: &Tensor, c: &ClipTextConfig) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (heads, hd) = (c.num_attention_heads, c.head_dim());
        let h = self.layer_norm1.forward(x, c.layer_norm_eps)?;
        let split = |t: Tensor| -> Result<Tensor> {
            // [b, L, heads·hd] → [b, heads, L, hd]
            Ok(t.reshape((b, l, heads, hd))?.transpose(1, 2)?)
        };
        let q = split(ops::linear(&h, &self.q_proj)?)?;
        let k = split(ops::linear(&h, &self.k_proj)?)?;
        let v = split(ops::linear(&h, &self.v_proj)?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let o = ops::attention_with_bias(&q, &k, &v, scale, bias)?
            .transpose(1, 2)?
            .reshape((b, l, d))?;
        let x = (ops::linear(&o, &self.out_proj)? + x)?;
        let h = self.layer_norm2.forward(&x, c.layer_norm_eps)?;
        let h = c.hidden_act.apply(&ops::linear(&h, &self.fc1)?)?;
        Ok((ops::linear(&h, &self.fc2)? + x)?)
    }

    fn tensors(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        let norm = |name: &str, n: &Norm, out: &mut Vec<(String, Tensor)>| {
            out.push((format!("{prefix}.{name}.weight"), n.weight.clone()));
            out.push((format!("{prefix}.{name}.bias"), n.bias.clone()));
        };
        let lin = |name: &str, l: &candle_nn::Linear, out: &mut Vec<(String, Tensor)>| {
            out.push((format!("{prefix}.{name}.weight"), l.weight().clone()));
            if let Some(b) = l.bias() {
                out.push((format!("{prefix}.{name}.bias"), b.clone()));
            }
        };
        norm("layer_norm1", &self.layer_norm1, out);
        lin("self_attn.q_proj", &self.q_proj, out);
        lin("self_attn.k_proj", &self.k_proj, out);
        lin("self_attn.v_proj", &self.v_proj, out);
        lin("self_attn.out_proj", &self.out_proj, out);
        norm("layer_norm2", &self.layer_norm2, out);
        lin("mlp.fc1", &self.fc1, out);
        lin("mlp.fc2", &self.fc2, out);
    }
}

/// transformers' `CLIPTextModel`.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    pub(crate) config: ClipTextConfig,
    /// `[vocab_size, d]`.
    pub(crate) token_embedding: Tensor,
    /// `[max_position_embeddings, d]`.
    pub(crate) position_embedding: Tensor,
    pub(crate) layers: Vec<EncoderLayer>,
    pub(crate) final_layer_norm: Norm,
}

impl ClipTextModel {
    /// Builds the model; weights come from `vb` under transformers' names (`text_model.…`).
    /// Over a fresh `VarMap` the variables get candle's default init: call [`seeded_init`]
    /// (or use [`Self::build`]) for transformers' init.
    pub fn new(config: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let d = c.hidden_size;
        let vb = vb.pp(PREFIX);
        let emb = vb.pp("embeddings");
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let token_embedding =
            emb.pp("token_embedding")
                .get_with_hints((c.vocab_size, d), "weight", normal)?;
        let position_embedding = emb.pp("position_embedding").get_with_hints(
            (c.max_position_embeddings, d),
            "weight",
            normal,
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(c, vb.pp("encoder").pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipTextModel {
            config: c.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm: Norm::new(d, vb.pp("final_layer_norm"))?,
        })
    }

    /// A freshly initialized model (transformers' init from `seed`, [`seeded_init`]) and the
    /// variables that hold its weights: the trainable form.
    pub fn build(config: &ClipTextConfig, device: &Device, seed: u64) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let model = Self::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        seeded_init(&varmap, config, seed)?;
        Ok((model, varmap))
    }

    /// Loads a `CLIPTextModel` folder (`config.json` + `model.safetensors`, a sharded index,
    /// an fp16 variant or `pytorch_model.bin`; f16/bf16 converted to f32) for inference: the
    /// model is built on detached tensors. Also returns the `VarMap` holding the same values
    /// (for training or saving). Weight names may carry the `text_model.` prefix (SD's
    /// checkpoints, transformers 4) or not (transformers 5 saves without it). Tensors the
    /// model does not use (`position_ids`, a buffer older checkpoints hold) are ignored.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, VarMap)> {
        let config = read_config(dir)?;
        let varmap = VarMap::new();
        Self::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, device),
        )?;
        let files = weight_files(dir)?;
        let tensors = crate::weights::read_weight_files(&files, device)?;
        crate::weights::assign(&varmap, &with_prefix(tensors), &files)?;
        let tensors = crate::weights::detached_tensors(&varmap);
        let model = Self::new(
            &config,
            VarBuilder::from_tensors(tensors, DType::F32, device),
        )?;
        Ok((model, varmap))
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (f32, each atomically, creating
    /// `dir`): a folder transformers' `CLIPTextModel.from_pretrained` and [`Self::load`] load.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let tensors = self
            .named_tensors()
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect::<Result<Vec<_>>>()?;
        let bytes = crate::weights::serialize_tensors(tensors)?;
        let write = |name: &str, bytes: &[u8]| {
            diffuse_data::fs::write_atomic(&dir.join(name), bytes)
                .map_err(|e| Error::Weights(e.to_string()))
        };
        write(WEIGHTS_NAME, &bytes)?;
        let mut config = self.config.clone();
        if config.architectures.is_none() {
            config.architectures = Some(vec![ARCHITECTURE.into()]);
        }
        let mut text = config.to_json_string();
        text.push('\n');
        write(CONFIG_NAME, text.as_bytes())
    }

    /// Every weight under its transformers name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let p = PREFIX;
        let mut out = vec![
            (
                format!("{p}.embeddings.token_embedding.weight"),
                self.token_embedding.clone(),
            ),
            (
                format!("{p}.embeddings.position_embedding.weight"),
                self.position_embedding.clone(),
            ),
        ];
        for (i, layer) in self.layers.iter().enumerate() {
            layer.tensors(&format!("{p}.encoder.layers.{i}"), &mut out);
        }
        out.push((
            format!("{p}.final_layer_norm.weight"),
            self.final_layer_norm.weight.clone(),
        ));
        out.push((
            format!("{p}.final_layer_norm.bias"),
            self.final_layer_norm.bias.clone(),
        ));
        out
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Width of the embeddings (SD's `cross_attention_dim`).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// `input_ids` `[b, L]` (u32 or i64) → last hidden state and pooled output (no attention
    /// mask, as SD 1.x/2.x pipelines call it).
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipOutput> {
        self.forward_with(input_ids, None, false)
    }

    /// transformers' `forward(input_ids, attention_mask, output_hidden_states)`.
    /// `attention_mask` `[b, L]`: 1 for tokens to attend to, 0 for padding (keys masked with
    /// the dtype's lowest value, as transformers does). The pooled token of a row is its first
    /// `eos_token_id`, or its largest id when the config's `eos_token_id` is the legacy 2 (both
    /// as transformers picks them; a row without eos pools position 0).
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        output_hidden_states: bool,
    ) -> Result<ClipOutput> {
        let n = self.layers.len();
        let (h, ids, states) =
            self.run_layers(input_ids, attention_mask, n, output_hidden_states)?;
        let last = self
            .final_layer_norm
            .forward(&h, self.config.layer_norm_eps)?;
        let (b, l, d) = last.dims3()?;
        let eos = self.config.eos_token_id;
        let rows: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let pos = if eos == 2 {
                    // torch's argmax: the first of equal maxima.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&x| x == max).unwrap_or(0)
                } else {
                    row.iter().position(|&x| x == eos).unwrap_or(0)
                };
                (i * l + pos) as u32
            })
            .collect();
        let index = Tensor::from_vec(rows, b, last.device())?;
        let pooled = last.reshape((b * l, d))?.index_select(&index, 0)?; // [b, d]
        Ok(ClipOutput {
            last_hidden_state: last,
            pooler_output: pooled,
            hidden_states: states,
        })
    }

    /// SD's prompt embeddings with diffusers' `clip_skip`: 0 (or SD's default) →
    /// `last_hidden_state`; k ≥ 1 → `final_layer_norm(hidden_states[-(k + 1)])`, the output of
    /// layer N − k (only those layers run). `[b, L]` ids → `[b, L, d]`.
    pub fn prompt_embeds(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        clip_skip: usize,
    ) -> Result<Tensor> {
        let n = self.layers.len();
        if clip_skip > n {
            return Err(Error::Input(format!(
                "clip_skip {clip_skip}: the text encoder has {n} layers; use 0..={n}"
            )));
        }
        let (h, _, _) = self.run_layers(input_ids, attention_mask, n - clip_skip, false)?;
        self.final_layer_norm
            .forward(&h, self.config.layer_norm_eps)
    }

    /// Embeddings and the first `layers` encoder layers: (h, the ids on the host, the hidden
    /// states when asked).
    #[allow(clippy::type_complexity)]
    fn run_layers(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: usize,
        output_hidden_states: bool,
    ) -> Result<(Tensor, Vec<Vec<u32>>, Option<Vec<Tensor>>)> {
        let c = &self.config;
        let dev = self.token_embedding.device();
        let (b, l) = input_ids.dims2().map_err(|_| {
            Error::Input(format!(
                "input_ids have shape {:?}; expected [batch, length]",
                input_ids.dims()
            ))
        })?;
        if l == 0 || l > c.max_position_embeddings {
            return Err(Error::Input(format!(
                "input_ids have length {l}; the text encoder takes 1..={} tokens (pad or \
                 truncate to the tokenizer's model_max_length)",
                c.max_position_embeddings
            )));
        }
        let ids = match input_ids.dtype() {
            DType::U32 => input_ids.clone(),
            DType::I64 | DType::U8 => input_ids.to_dtype(DType::U32)?,
            other => {
                return Err(Error::Input(format!(
                    "input_ids have dtype {other:?}; expected u32 or i64 token ids"
                )))
            }
        };
        let host: Vec<Vec<u32>> = ids.to_device(&Device::Cpu)?.to_vec2()?;
        if let Some(bad) = host.iter().flatten().find(|&&x| x as usize >= c.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the text encoder's vocabulary (vocab_size {}); the \
                 tokenizer and text encoder do not match",
                c.vocab_size
            )));
        }
        let ids = ids.to_device(dev)?;
        let d = c.hidden_size;
        let tok = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, d))?;
        let pos = self.position_embedding.narrow(0, 0, l)?.unsqueeze(0)?;
        let mut h = tok.broadcast_add(&pos)?; // [b, L, d]

        // Causal mask [1, 1, L, L], plus the padding mask [b, 1, 1, L].
        let causal: Vec<f32> = (0..l)
            .flat_map(|i| (0..l).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let mut bias = Tensor::from_vec(causal, (1, 1, l, l), dev)?;
        if let Some(m) = attention_mask {
            if m.dims() != [b, l] {
                return Err(Error::Input(format!(
                    "attention_mask has shape {:?}; expected [{b}, {l}] like input_ids",
                    m.dims()
                )));
            }
            let keep = m.to_dtype(DType::F32)?.to_device(dev)?;
            let pad = ((1.0 - keep)? * f32::MIN as f64)?.reshape((b, 1, 1, l))?;
            bias = bias.broadcast_add(&pad)?;
        }
        let mut states = output_hidden_states.then(|| vec![h.clone()]);
        for layer in &self.layers[..layers] {
            h = layer.forward(&h, &bias, c)?;
            if let Some(s) = states.as_mut() {
                s.push(h.clone());
            }
        }
        Ok((h, host, states))
    }
}

/// Re-initializes a CLIP text model's variables from `seed` as transformers'
/// `CLIPPreTrainedModel._init_weights` does (f = `initializer_factor`, d = `hidden_size`,
/// N = `num_hidden_layers`): token and position embeddings N(0, 0.02·f); q/k/v N(0,
/// d^−½·(2N)^−½·f), out_proj N(0, d^−½·f); fc1 N(0, (2d)^−½·f), fc2 N(0, d^−½·(2N)^−½·f);
/// linear biases 0; LayerNorms weight 1, bias 0.
pub fn seeded_init(varmap: &VarMap, config: &ClipTextConfig, seed: u64) -> Result<()> {
    use rand::SeedableRng;
    let f = config.initializer_factor;
    let d = config.hidden_size as f64;
    let depth = (2.0 * config.num_hidden_layers as f64).powf(-0.5);
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xC11_7E47);
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let weight = name.ends_with(".weight");
        // None: a LayerNorm (weight 1, bias 0); Some(σ): N(0, σ), σ = 0 for a bias.
        let std = if name.contains("layer_norm") {
            None
        } else if !weight {
            Some(0.0)
        } else if name.contains("embedding") {
            Some(0.02 * f)
        } else if name.contains("out_proj") {
            Some(d.powf(-0.5) * f)
        } else if name.contains("_proj") || name.contains("fc2") {
            Some(d.powf(-0.5) * depth * f)
        } else if name.contains("fc1") {
            Some((2.0 * d).powf(-0.5) * f)
        } else {
            return Err(Error::Weights(format!(
                "seeded_init: no init rule for `{name}`"
            )));
        };
        let values: Vec<f32> = match std {
            None => vec![if weight { 1.0 } else { 0.0 }; n],
            Some(s) if s > 0.0 => {
                let normal = rand_distr::Normal::new(0f32, s as f32).expect("valid σ");
                (0..n)
                    .map(|_| rand::Rng::sample(&mut rng, normal))
                    .collect()
            }
            Some(_) => vec![0.0; n],
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Names as the model has them: `text_model.` put before a name without it (transformers 5
/// writes `CLIPTextModel` weights unprefixed), unless the prefixed name is there too.
fn with_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let prefix = format!("{PREFIX}.");
    let mut out: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len());
    let (prefixed, bare): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(k, _)| k.starts_with(&prefix));
    out.extend(prefixed);
    for (k, t) in bare {
        out.entry(format!("{prefix}{k}")).or_insert(t);
    }
    out
}

/// Reads and validates `dir/config.json` as a `CLIPTextConfig`.
pub fn read_config(dir: &Path) -> Result<ClipTextConfig> {
    let path = dir.join(CONFIG_NAME);
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    ClipTextConfig::from_json_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// The weight file(s) of a CLIP text model folder, in transformers' order of preference:
/// `model.safetensors`, its sharded index, diffusers' `fp16` variant, then `pytorch_model.bin`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let plain = dir.join(WEIGHTS_NAME);
    if plain.exists() {
        return Ok(vec![plain]);
    }
    if let Some(files) =
        crate::weights::sharded_index(&dir.join(format!("{WEIGHTS_NAME}.index.json")))?
    {
        return Ok(files);
    }
    for name in [
        "model.fp16.safetensors",
        "model.bf16.safetensors",
        BIN_WEIGHTS_NAME,
        "pytorch_model.fp16.bin",
    ] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(vec![p]);
        }
    }
    Err(Error::Weights(format!(
        "{}: no {WEIGHTS_NAME} (nor a sharded {WEIGHTS_NAME}.index.json, an fp16 variant or \
         {BIN_WEIGHTS_NAME}); expected a CLIPTextModel folder as transformers' save_pretrained \
         writes it",
        dir.display()
    )))
}

/// Named tensors of `model` as a map (e.g. for [`VarBuilder::from_tensors`]).
pub fn tensor_map(model: &ClipTextModel) -> HashMap<String, Tensor> {
    model.named_tensors().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn tiny() -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 40,
            hidden_size: 16,
            intermediate_size: 24,
            projection_dim: 8,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 8,
            eos_token_id: 39,
            bos_token_id: Some(38),
            pad_token_id: Some(39),
            ..Default::default()
        }
    }

    fn ids(rows: &[&[u32]]) -> Tensor {
        let l = rows[0].len();
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), l), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn config_errors_name_the_key_and_allowed_values() {
        let e = ClipTextConfig::from_json_str(r#"{"hidden_act": "mish"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hidden_act") && e.contains("quick_gelu") && e.contains("gelu_new"),
            "{e}"
        );
        let e = ClipTextConfig::from_json_str(r#"{"hidden_size": 10, "num_attention_heads": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        let e = ClipTextConfig::from_json_str(r#"{"model_type": "clip", "text_config": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CLIPConfig"), "{e}");
    }

    #[test]
    fn config_round_trips_with_unknown_keys() {
        let text = r#"{"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            "hidden_act": "gelu", "hidden_size": 32, "num_attention_heads": 2,
            "torch_dtype": "float32", "transformers_version": "4.57.1", "eos_token_id": 2}"#;
        let c = ClipTextConfig::from_json_str(text).unwrap();
        assert_eq!(c.hidden_act, HiddenAct::Gelu);
        assert_eq!(c.eos_token_id, 2);
        let back: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        assert_eq!(back["torch_dtype"], "float32");
        assert_eq!(back["hidden_act"], "gelu");
        assert_eq!(
            ClipTextConfig::from_json_str(&c.to_json_string()).unwrap(),
            c
        );
    }

    #[test]
    fn causal_mask_keeps_earlier_positions_unchanged() {
        let (m, _) = ClipTextModel::build(&tiny(), &Device::Cpu, 1).unwrap();
        let a = m
            .forward_with(&ids(&[&[38, 5, 6, 7, 39]]), None, true)
            .unwrap();
        let b = m
            .forward_with(&ids(&[&[38, 5, 6, 9, 39]]), None, true)
            .unwrap();
        let (ha, hb) = (&a.last_hidden_state, &b.last_hidden_state);
        assert_eq!(
            max_diff(&ha.narrow(1, 0, 3).unwrap(), &hb.narrow(1, 0, 3).unwrap()),
            0.0
        );
        assert!(max_diff(&ha.narrow(1, 3, 1).unwrap(), &hb.narrow(1, 3, 1).unwrap()) > 1e-4);
        assert_eq!(a.hidden_states.as_ref().unwrap().len(), 3);
    }

    #[test]
    fn pooler_takes_the_eos_position() {
        let c = tiny();
        let (m, _) = ClipTextModel::build(&c, &Device::Cpu, 2).unwrap();
        let x = ids(&[&[38, 5, 39, 39, 39], &[38, 5, 6, 7, 39]]);
        let out = m.forward(&x).unwrap();
        let want0 = out.last_hidden_state.get(0).unwrap().get(2).unwrap();
        let want1 = out.last_hidden_state.get(1).unwrap().get(4).unwrap();
        assert_eq!(max_diff(&out.pooler_output.get(0).unwrap(), &want0), 0.0);
        assert_eq!(max_diff(&out.pooler_output.get(1).unwrap(), &want1), 0.0);
        // Legacy eos_token_id 2: the largest id of each row (39 at 4; no id is 2, so the
        // `== eos` rule would pick position 0).
        let mut legacy = c.clone();
        legacy.eos_token_id = 2;
        let m2 = ClipTextModel::new(
            &legacy,
            VarBuilder::from_tensors(tensor_map(&m), DType::F32, &Device::Cpu),
        )
        .unwrap();
        let out = m2.forward(&x).unwrap();
        let row = out.last_hidden_state.get(1).unwrap();
        let pooled = out.pooler_output.get(1).unwrap();
        assert_eq!(max_diff(&pooled, &row.get(4).unwrap()), 0.0);
        assert!(max_diff(&pooled, &row.get(0).unwrap()) > 0.0);
    }

    #[test]
    fn clip_skip_is_the_normed_earlier_layer() {
        let (m, _) = ClipTextModel::build(&tiny(), &Device::Cpu, 3).unwrap();
        let x = ids(&[&[38, 5, 6, 39]]);
        let out = m.forward_with(&x, None, true).unwrap();
        let e0 = m.prompt_embeds(&x, None, 0).unwrap();
        assert_eq!(max_diff(&e0, &out.last_hidden_state), 0.0);
        let e1 = m.prompt_embeds(&x, None, 1).unwrap();
        let states = out.hidden_states.unwrap();
        let want = m
            .final_layer_norm
            .forward(&states[states.len() - 2], 1e-5)
            .unwrap();
        assert_eq!(max_diff(&e1, &want), 0.0);
        assert!(m.prompt_embeds(&x, None, 3).is_err());
    }

    #[test]
    fn padding_mask_hides_padded_keys() {
        let (m, _) = ClipTextModel::build(&tiny(), &Device::Cpu, 4).unwrap();
        let mask = ids(&[&[1, 1, 1, 0, 0]]);
        let a = m
            .forward_with(&ids(&[&[38, 5, 39, 39, 39]]), Some(&mask), false)
            .unwrap();
        let b = m
            .forward_with(&ids(&[&[38, 5, 39, 7, 8]]), Some(&mask), false)
            .unwrap();
        // Positions 0..3 see only keys 0..=i (causal), never the padded tail.
        let d = max_diff(
            &a.last_hidden_state.narrow(1, 0, 3).unwrap(),
            &b.last_hidden_state.narrow(1, 0, 3).unwrap(),
        );
        assert_eq!(d, 0.0);
        // A padded query attends to keys 0..=2 only: without the mask it also sees 3 and 4.
        let e = m
            .forward_with(&ids(&[&[38, 5, 39, 39, 39]]), None, false)
            .unwrap();
        assert!(
            max_diff(
                &a.last_hidden_state.narrow(1, 4, 1).unwrap(),
                &e.last_hidden_state.narrow(1, 4, 1).unwrap()
            ) > 1e-5,
            "the padding mask changes what padded positions attend to"
        );
    }

    #[test]
    fn input_errors_say_what_fits() {
        let (m, _) = ClipTextModel::build(&tiny(), &Device::Cpu, 5).unwrap();
        let e = m.forward(&ids(&[&[1; 9]])).unwrap_err().to_string();
        assert!(e.contains("1..=8"), "{e}");
        let e = m.forward(&ids(&[&[40]])).unwrap_err().to_string();
        assert!(e.contains("vocab_size 40"), "{e}");
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let c = tiny();
        let (m, varmap) = ClipTextModel::build(&c, &Device::Cpu, 6).unwrap();
        let x = ids(&[&[38, 5, 6, 39, 39], &[38, 7, 39, 39, 39]]);
        let out = m.forward(&x).unwrap();
        let dev = Device::Cpu;
        let w1 = Tensor::randn(0f32, 1.0, out.last_hidden_state.shape(), &dev).unwrap();
        let w2 = Tensor::randn(0f32, 1.0, out.pooler_output.shape(), &dev).unwrap();
        let loss = ((out.last_hidden_state * w1).unwrap().sum_all().unwrap()
            + (out.pooler_output * w2).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(vars.len(), 2 + 16 * c.num_hidden_layers + 2);
        for (name, var) in vars {
            let g = grads
                .get(&var)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(n.is_finite() && n > 0.0, "{name}: |grad| = {n}");
        }
    }

    #[test]
    fn finite_difference_matches_backward() {
        // One weight of layer 0's fc1 (through quick_gelu, LayerNorm and attention).
        let c = tiny();
        let (m, varmap) = ClipTextModel::build(&c, &Device::Cpu, 7).unwrap();
        let x = ids(&[&[38, 5, 6, 39]]);
        let w = Tensor::randn(0f32, 1.0, (1, 4, 16), &Device::Cpu).unwrap();
        let loss = |m: &ClipTextModel| -> f64 {
            let h = m.forward(&x).unwrap().last_hidden_state;
            (h * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let name = "text_model.encoder.layers.0.mlp.fc1.weight";
        let var = varmap.data().lock().unwrap()[name].clone();
        let h = m.forward(&x).unwrap().last_hidden_state;
        let g = (h * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let analytic: f32 = g
            .get(&var)
            .unwrap()
            .get(3)
            .unwrap()
            .get(5)
            .unwrap()
            .to_scalar()
            .unwrap();
        let base = var.as_tensor().copy().unwrap();
        let eps = 1e-2f32;
        let bump = |delta: f32| -> f64 {
            let mut v: Vec<Vec<f32>> = base.to_vec2().unwrap();
            v[3][5] += delta;
            var.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
            loss(&m)
        };
        let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps as f64);
        var.set(&base).unwrap();
        let err = (numeric - analytic as f64).abs() / analytic.abs().max(1e-3) as f64;
        assert!(err < 2e-2, "numeric {numeric}, analytic {analytic}");
    }

    #[test]
    fn save_and_load_round_trip() {
        let (m, _) = ClipTextModel::build(&tiny(), &Device::Cpu, 8).unwrap();
        let x = ids(&[&[38, 5, 6, 39]]);
        let dir = tempfile::tempdir().unwrap();
        // transformers 5's layout: no `text_model.` prefix.
        let bare: Vec<(String, Tensor)> = m
            .named_tensors()
            .into_iter()
            .map(|(k, t)| (k.trim_start_matches("text_model.").to_string(), t))
            .collect();
        std::fs::write(dir.path().join(CONFIG_NAME), m.config().to_json_string()).unwrap();
        std::fs::write(
            dir.path().join(WEIGHTS_NAME),
            crate::weights::serialize_tensors(bare).unwrap(),
        )
        .unwrap();
        let (back, _) = ClipTextModel::load(dir.path(), &Device::Cpu).unwrap();
        let d = max_diff(
            &m.forward(&x).unwrap().last_hidden_state,
            &back.forward(&x).unwrap().last_hidden_state,
        );
        assert_eq!(d, 0.0);
        m.save(dir.path()).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_NAME)).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], MODEL_TYPE);
        assert_eq!(cfg["architectures"][0], ARCHITECTURE);
        let (back, _) = ClipTextModel::load(dir.path(), &Device::Cpu).unwrap();
        let d = max_diff(
            &m.forward(&x).unwrap().last_hidden_state,
            &back.forward(&x).unwrap().last_hidden_state,
        );
        assert_eq!(d, 0.0);
        // A missing tensor is named; a buffer like position_ids is ignored.
        let mut tensors = m.named_tensors();
        tensors.push((
            "text_model.embeddings.position_ids".into(),
            Tensor::arange(0i64, 8, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        ));
        let bytes = crate::weights::serialize_tensors(tensors.clone()).unwrap();
        std::fs::write(dir.path().join(WEIGHTS_NAME), bytes).unwrap();
        ClipTextModel::load(dir.path(), &Device::Cpu).unwrap();
        tensors.retain(|(k, _)| !k.contains("layers.1.mlp.fc2.bias"));
        let bytes = crate::weights::serialize_tensors(tensors).unwrap();
        std::fs::write(dir.path().join(WEIGHTS_NAME), bytes).unwrap();
        let e = ClipTextModel::load(dir.path(), &Device::Cpu)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("text_model.encoder.layers.1.mlp.fc2.bias"),
            "{e}"
        );
    }
}

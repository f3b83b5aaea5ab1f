//! ONNX export written by diffuse itself: the denoising network of a model or pipeline folder
//! (`UNet2DModel`, `UNet2DConditionModel`, `DiTTransformer2DModel`), a latent pipeline's
//! `AutoencoderKL` decoder or a Stable Diffusion pipeline's `CLIPTextModel`, as one
//! self-contained `.onnx` file (ONNX IR 8, opset 17, weights as little-endian f32 `raw_data`
//! initializers under diffusers' (transformers') names).
//!
//! - [`proto`]: the messages of `onnx/onnx.proto` that are written (prost, no protoc).
//! - `graph`: the builder and the shared layers (GroupNorm as torch.onnx decomposes it,
//!   SiLU, GELU, Linear, LayerNorm, self- and cross-attention, resampling).
//! - `unet`, `unet_cond`, `dit`, `vae`, `clip`: one exporter per model, each mirroring the
//!   candle forward.
//!
//! Graph inputs: `sample` with a symbolic `batch` dimension (and symbolic `height`/`width` for
//! the UNets and the VAE decoder; a DiT is fixed to its `sample_size`), `timestep` float32
//! `[batch]` — the time embedding is computed inside the graph — and `class_labels` for
//! class-conditional models or `encoder_hidden_states` `[batch, sequence, cross_attention_dim]`
//! for a text-conditional UNet. Output: `out_sample` (the decoder: `latent_sample` → `sample`;
//! the text encoder: `input_ids` int64 `[batch, sequence]` → `last_hidden_state`,
//! `pooler_output`). Writing the same model twice gives the same bytes.

pub mod proto;

mod clip;
mod dit;
mod graph;
mod unet;
mod unet_cond;
mod vae;

use crate::net::Network;
use crate::text::ClipTextModel;
use crate::unet_2d_condition::UNet2DConditionModel;
use crate::weights::{self, resolve_model_folder, CONFIG_NAME};
use crate::{AutoencoderKL, DiTTransformer2DModel, Error, Result, UNet2DModel};
use candle_core::Device;
use proto::{GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use std::path::{Path, PathBuf};

/// The ONNX IR version written (ONNX 1.12, the first with opset 17).
pub const IR_VERSION: i64 = 8;
/// The default-domain opset the graphs use.
pub const OPSET: i64 = 17;

/// The ModelProto around a finished graph of a diffusers model.
fn model(graph: GraphProto, component: &str, config_json: &str, doc: &str) -> ModelProto {
    model_with(graph, component, ("diffusers.config", config_json), doc)
}

/// The ModelProto around a finished graph; `config`: the metadata key and the config's JSON.
fn model_with(
    graph: GraphProto,
    component: &str,
    (config_key, config_json): (&str, &str),
    doc: &str,
) -> ModelProto {
    let entry = |k: &str, v: &str| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("diffuse".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(doc.into()),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        metadata_props: vec![
            entry("diffuse.component", component),
            entry(config_key, config_json),
        ],
        ..Default::default()
    }
}

/// A UNet2DModel's graph (see the module docs for its inputs).
pub fn export_unet(model: &UNet2DModel) -> Result<ModelProto> {
    unet::export(model)
}

/// A UNet2DConditionModel's graph (inputs `sample`, `timestep`, `encoder_hidden_states`).
pub fn export_unet_cond(model: &UNet2DConditionModel) -> Result<ModelProto> {
    unet_cond::export(model)
}

/// A CLIPTextModel's graph (`input_ids` → `last_hidden_state`, `pooler_output`).
pub fn export_text_encoder(model: &ClipTextModel) -> Result<ModelProto> {
    clip::export(model)
}

/// A DiTTransformer2DModel's graph.
pub fn export_dit(model: &DiTTransformer2DModel) -> Result<ModelProto> {
    dit::export(model)
}

/// The graph of an AutoencoderKL's `decode` (post-quant conv + decoder).
pub fn export_vae_decoder(vae: &AutoencoderKL) -> Result<ModelProto> {
    vae::export_decoder(vae)
}

/// A denoising network's graph, UNet (unconditional, class- or text-conditional) or DiT.
pub fn export_net(net: &Network) -> Result<ModelProto> {
    match net {
        Network::UNet(m) => export_unet(m),
        Network::DiT(m) => export_dit(m),
        Network::UNetCond(m) => export_unet_cond(m),
    }
}

/// The file's bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// The graph's inputs and outputs in one line, e.g. `sample [batch, 3, height, width] f32,
/// timestep [batch] f32 → out_sample [batch, 3, height, width] f32`.
pub fn signature(model: &ModelProto) -> String {
    let one = |v: &proto::ValueInfoProto| -> String {
        let t = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let dims: Vec<String> = t
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(proto::DimValue::DimValue(n)) => n.to_string(),
                        Some(proto::DimValue::DimParam(p)) => p.clone(),
                        None => "?".into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let elem = match t.and_then(|t| t.elem_type) {
            Some(proto::FLOAT) => "f32",
            Some(proto::INT64) => "i64",
            _ => "?",
        };
        format!(
            "{} [{}] {elem}",
            v.name.as_deref().unwrap_or("?"),
            dims.join(", ")
        )
    };
    let Some(g) = &model.graph else {
        return String::new();
    };
    let list = |v: &[proto::ValueInfoProto]| v.iter().map(one).collect::<Vec<_>>().join(", ");
    format!("{} → {}", list(&g.input), list(&g.output))
}

/// Which network of a folder to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The folder's denoising network (`unet/` or `transformer/`); for a bare AutoencoderKL
    /// folder its decoder, for a bare CLIPTextModel folder the text encoder.
    Denoiser,
    /// The denoiser, which must be a UNet (UNet2DModel or UNet2DConditionModel).
    Unet,
    /// The denoiser, which must be a DiTTransformer2DModel.
    Transformer,
    /// The `vae/` decoder of a latent pipeline (or of a bare AutoencoderKL folder).
    VaeDecoder,
    /// The `text_encoder/` (CLIPTextModel) of a text-to-image pipeline (or a bare
    /// CLIPTextModel folder).
    TextEncoder,
}

impl std::str::FromStr for Component {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "denoiser" => Ok(Component::Denoiser),
            "unet" => Ok(Component::Unet),
            "transformer" | "dit" => Ok(Component::Transformer),
            "vae-decoder" | "vae_decoder" => Ok(Component::VaeDecoder),
            "text-encoder" | "text_encoder" => Ok(Component::TextEncoder),
            _ => Err(Error::Config(format!(
                "unknown component {s:?}; allowed: denoiser, unet, transformer (dit), \
                 vae-decoder, text-encoder"
            ))),
        }
    }
}

/// An exported network.
#[derive(Debug, Clone)]
pub struct Exported {
    pub model: ModelProto,
    /// The model folder the weights came from.
    pub source: PathBuf,
    /// "UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "AutoencoderKL
    /// decoder" or "CLIPTextModel".
    pub what: &'static str,
}

/// What a bare model folder holds besides a denoising network, from its config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bare {
    Vae,
    TextEncoder,
    Other,
}

/// A bare model folder's kind: an AutoencoderKL by `_class_name`, a CLIPTextModel by
/// transformers' `model_type`.
fn bare_kind(dir: &Path) -> Result<Bare> {
    let path = dir.join(CONFIG_NAME);
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: malformed JSON: {e}", path.display())))?;
    let key = |k: &str| v.get(k).and_then(|c| c.as_str());
    Ok(if key("_class_name") == Some("AutoencoderKL") {
        Bare::Vae
    } else if key("model_type") == Some(crate::text::clip::MODEL_TYPE) {
        Bare::TextEncoder
    } else {
        Bare::Other
    })
}

/// Loads `component` of a pipeline or model folder (`no_ema`: the plain weights even when
/// `unet_ema/` or `transformer_ema/` is there) and builds its graph.
pub fn export_folder(dir: &Path, component: Component, no_ema: bool) -> Result<Exported> {
    let folder = resolve_model_folder(dir)?;
    let dev = Device::Cpu;
    let bare = if folder.pipeline_class.is_none() {
        bare_kind(&folder.net_dir)?
    } else {
        Bare::Other
    };
    let vae_dir = match bare {
        Bare::Vae => Some(folder.net_dir.clone()),
        _ => folder.vae_dir.clone(),
    };
    let text_encoder_dir = match bare {
        Bare::TextEncoder => Some(folder.net_dir.clone()),
        _ => folder.text_encoder_dir.clone(),
    };
    let component = match (component, bare) {
        (Component::Denoiser, Bare::Vae) => Component::VaeDecoder,
        (Component::Denoiser, Bare::TextEncoder) => Component::TextEncoder,
        (Component::Unet | Component::Transformer, Bare::Vae | Bare::TextEncoder) => {
            let (what, with) = match bare {
                Bare::Vae => ("an AutoencoderKL", "vae-decoder"),
                _ => ("a CLIPTextModel", "text-encoder"),
            };
            return Err(Error::Config(format!(
                "{} is {what} folder: it has no denoising network; export it with component \
                 {with}",
                dir.display()
            )));
        }
        (c, _) => c,
    };
    match component {
        Component::VaeDecoder => {
            let vae_dir = vae_dir.ok_or_else(|| {
                Error::Config(format!(
                    "{} has no vae/ component (a pixel-space pipeline or a bare network \
                     folder): there is no VAE decoder to export",
                    dir.display()
                ))
            })?;
            let (vae, _) = weights::load_vae(&vae_dir, &dev)?;
            return Ok(Exported {
                model: export_vae_decoder(&vae)?,
                source: vae_dir,
                what: "AutoencoderKL decoder",
            });
        }
        Component::TextEncoder => {
            let te_dir = text_encoder_dir.ok_or_else(|| {
                Error::Config(format!(
                    "{} has no text_encoder/ component (only a text-to-image pipeline such as \
                     StableDiffusionPipeline has one): there is no text encoder to export",
                    dir.display()
                ))
            })?;
            let (te, _) = ClipTextModel::load(&te_dir, &dev)?;
            return Ok(Exported {
                model: export_text_encoder(&te)?,
                source: te_dir,
                what: "CLIPTextModel",
            });
        }
        _ => {}
    }
    let net_dir = folder.net_dir_to_load(no_ema).to_path_buf();
    let (net, _) = weights::load_net(&net_dir, &dev)?;
    let what = match &net {
        Network::UNet(_) => "UNet2DModel",
        Network::DiT(_) => "DiTTransformer2DModel",
        Network::UNetCond(_) => "UNet2DConditionModel",
    };
    let wrong = match (&net, component) {
        (Network::DiT(_), Component::Unet) => Some("unet"),
        (Network::UNet(_) | Network::UNetCond(_), Component::Transformer) => Some("transformer"),
        _ => None,
    };
    if let Some(want) = wrong {
        return Err(Error::Config(format!(
            "{}: the denoising network is a {what}, not the requested {want}; use component \
             denoiser",
            net_dir.display()
        )));
    }
    Ok(Exported {
        model: export_net(&net)?,
        source: net_dir,
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UNet2DConfig;
    use prost::Message;

    #[test]
    fn component_names() {
        assert_eq!("dit".parse::<Component>().unwrap(), Component::Transformer);
        assert_eq!(
            "vae-decoder".parse::<Component>().unwrap(),
            Component::VaeDecoder
        );
        assert_eq!(
            "text_encoder".parse::<Component>().unwrap(),
            Component::TextEncoder
        );
        let e = "vae".parse::<Component>().unwrap_err().to_string();
        assert!(
            e.contains("vae-decoder") && e.contains("text-encoder"),
            "{e}"
        );
    }

    #[test]
    fn a_text_encoder_with_another_activation_is_refused_in_one_line() {
        let config = crate::text::ClipTextConfig::from_json_str(
            r#"{"model_type": "clip_text_model", "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10,
                "max_position_embeddings": 4, "hidden_act": "gelu_new"}"#,
        )
        .unwrap();
        let (m, _) = ClipTextModel::build(&config, &Device::Cpu, 1).unwrap();
        let e = export_text_encoder(&m).unwrap_err().to_string();
        assert!(
            e.contains("\"gelu_new\"") && e.contains("quick_gelu"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn unet_graph_is_well_formed_and_deterministic() {
        let config = UNet2DConfig::from_json_str(
            r#"{"block_out_channels": [8, 16], "norm_num_groups": 4, "in_channels": 1,
                "out_channels": 1, "layers_per_block": 1, "attention_head_dim": 4,
                "num_class_embeds": 3, "resnet_time_scale_shift": "scale_shift",
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}"#,
        )
        .unwrap();
        let (m, varmap) = weights::build_unet(&config, &Device::Cpu).unwrap();
        weights::seeded_init(&varmap, 1).unwrap();
        let a = to_bytes(&export_unet(&m).unwrap());
        let b = to_bytes(&export_unet(&m).unwrap());
        assert_eq!(a, b);
        let p = ModelProto::decode(a.as_slice()).unwrap();
        let g = p.graph.unwrap();
        let names = |v: &[proto::ValueInfoProto]| -> Vec<String> {
            v.iter().map(|i| i.name.clone().unwrap()).collect()
        };
        assert_eq!(names(&g.input), ["sample", "timestep", "class_labels"]);
        assert_eq!(names(&g.output), ["out_sample"]);
        // Every weight of the model is an initializer under its diffusers name, with its values.
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            let init = g
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no initializer {name}"));
            let want: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
            let raw = init.raw_data.as_ref().unwrap();
            let got: Vec<f32> = raw
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(
                init.dims,
                var.dims().iter().map(|&d| d as i64).collect::<Vec<_>>()
            );
        }
        // Every node input is a graph input, an initializer or an earlier node's output.
        let mut known: std::collections::HashSet<String> = names(&g.input).into_iter().collect();
        known.extend(g.initializer.iter().map(|t| t.name.clone().unwrap()));
        known.insert(String::new()); // an omitted optional input
        for n in &g.node {
            for i in &n.input {
                assert!(known.contains(i), "{:?} uses unknown {i}", n.name);
            }
            known.extend(n.output.iter().cloned());
        }
        assert!(known.contains("out_sample"));
    }
}

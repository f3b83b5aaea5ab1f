//! Weight-only int8 quantisation of a denoiser (`diffuse quantize`): every conv and linear
//! weight becomes int8 with one f32 scale per output channel, symmetric, as PyTorch's
//! `torch.quantize_per_channel(w, scales, zero_points=0, axis=0, dtype=torch.qint8)` with
//! `PerChannelMinMaxObserver(qscheme=torch.per_channel_symmetric)` computes it, except that the
//! range is [−127, 127] (no −128, so that −q is always representable):
//!
//! ```text
//! scale_c = max_i |w_c,i| / 127        q_c,i = clamp(round_half_even(w_c,i / scale_c), −127, 127)
//! ```
//!
//! so `|w − q·scale| ≤ scale / 2` per element. An all-zero channel gets scale 0 and q = 0.
//!
//! On disk (safetensors, readable by `safetensors.torch.load_file`): the weight under its
//! diffusers name as an `I8` tensor of the weight's shape, and `<name>_scale` (e.g.
//! `conv_in.weight_scale`) as `F32 [out_channels]`; everything else (biases, norms, embedding
//! tables) stays as it was. `config.json` records it as transformers and diffusers record their
//! quantisers, `"quantization_config": {"quant_method": "diffuse_int8", …}`; diffusers refuses the
//! unknown method instead of misreading the weights.
//!
//! Compute is f32: the loader ([`read_safetensors`], used by `weights::load_into`) dequantises
//! at load, so a quantised model runs at the float model's speed and the saving is on disk
//! (about 4× for the weights). candle 0.11.1 has no int8 dtype (its safetensors reader refuses
//! `I8`), so int8 tensors are read and written here with the `safetensors` crate directly.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// `quantization_config.quant_method` of diffuse's int8 weights.
pub const QUANT_METHOD: &str = "diffuse_int8";
/// Suffix of the per-channel scale tensor beside each int8 weight.
pub const SCALE_SUFFIX: &str = "_scale";
/// Largest |q|: the symmetric int8 range is [−127, 127].
pub const QMAX: f32 = 127.0;

/// `quantization_config.bits`: int8.
pub const DEFAULT_BITS: u32 = 8;
/// `quantization_config.symmetric`: no zero point.
pub const DEFAULT_SYMMETRIC: bool = true;
/// `quantization_config.granularity`: one scale per output channel.
pub const DEFAULT_GRANULARITY: &str = "per_output_channel";

fn default_bits() -> u32 {
    DEFAULT_BITS
}
fn default_symmetric() -> bool {
    DEFAULT_SYMMETRIC
}
fn default_granularity() -> String {
    DEFAULT_GRANULARITY.into()
}
fn default_scale_suffix() -> String {
    SCALE_SUFFIX.into()
}

/// `config.json`'s `quantization_config` for [`QUANT_METHOD`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuantizationConfig {
    pub quant_method: String,
    #[serde(default = "default_bits")]
    pub bits: u32,
    #[serde(default = "default_symmetric")]
    pub symmetric: bool,
    /// Only `per_output_channel` (axis 0 of conv `[out, in, k, k]` and linear `[out, in]`).
    #[serde(default = "default_granularity")]
    pub granularity: String,
    #[serde(default = "default_scale_suffix")]
    pub scale_suffix: String,
    /// Informational keys (`compute`, `quantized`, `weights_quantized`, …), kept.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl QuantizationConfig {
    /// The config `diffuse quantize` writes; `n` = number of int8 weights.
    pub fn int8(n: usize) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("compute".into(), "dequantize_at_load_f32".into());
        extra.insert("quantized".into(), "conv and linear weights".into());
        extra.insert("num_quantized_weights".into(), n.into());
        QuantizationConfig {
            quant_method: QUANT_METHOD.into(),
            bits: DEFAULT_BITS,
            symmetric: DEFAULT_SYMMETRIC,
            granularity: default_granularity(),
            scale_suffix: default_scale_suffix(),
            extra,
        }
    }

    /// Parses and checks a `quantization_config` value; errors name the key.
    pub fn from_value(v: &Value) -> Result<Self> {
        let bad = |key: &str, msg: String| {
            Error::Config(format!("config key `quantization_config.{key}`: {msg}"))
        };
        let method = v
            .get("quant_method")
            .ok_or_else(|| bad("quant_method", "missing".into()))?;
        if method.as_str() != Some(QUANT_METHOD) {
            return Err(bad(
                "quant_method",
                format!("unknown value {method}; diffuse reads: {QUANT_METHOD} (weights from `diffuse quantize`)"),
            ));
        }
        let c: QuantizationConfig = serde_json::from_value(v.clone())
            .map_err(|e| Error::Config(format!("config key `quantization_config`: {e}")))?;
        if c.bits != 8 {
            return Err(bad("bits", format!("{}; allowed: 8", c.bits)));
        }
        if !c.symmetric {
            return Err(bad("symmetric", "false; allowed: true".into()));
        }
        if c.granularity != "per_output_channel" {
            return Err(bad(
                "granularity",
                format!("{:?}; allowed: per_output_channel", c.granularity),
            ));
        }
        if c.scale_suffix != SCALE_SUFFIX {
            return Err(bad(
                "scale_suffix",
                format!("{:?}; allowed: {SCALE_SUFFIX:?}", c.scale_suffix),
            ));
        }
        Ok(c)
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("serializable")
    }
}

/// Whether weight `name` of rank `rank` is a conv (rank 4) or linear (rank 2) weight that
/// [`quantize_tensors`] turns into int8. Embedding tables (the UNet's `class_embedding.weight`
/// and learned `time_proj.weight`, the DiT's `…embedding_table.weight`) stay as they are: they
/// are looked up, not multiplied, and are small.
pub fn is_quantizable(name: &str, rank: usize) -> bool {
    let Some(stem) = name.strip_suffix(".weight") else {
        return false;
    };
    let table =
        stem == "class_embedding" || stem == "time_proj" || stem.ends_with("embedding_table");
    (rank == 2 || rank == 4) && !table
}

/// Per-output-channel symmetric int8 of `w` (`[out, …]`): (q row-major, one scale per row).
pub fn quantize_per_channel(w: &Tensor) -> Result<(Vec<i8>, Vec<f32>)> {
    let rows = w.dim(0)?;
    let flat: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let per = flat.len() / rows.max(1);
    let mut q = Vec::with_capacity(flat.len());
    let mut scales = Vec::with_capacity(rows);
    for row in flat.chunks(per.max(1)).take(rows) {
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        if !max.is_finite() {
            return Err(Error::Weights(
                "cannot quantise a weight with non-finite values".into(),
            ));
        }
        let scale = max / QMAX;
        scales.push(scale);
        for &x in row {
            let v = if scale > 0.0 {
                (x / scale).round_ties_even().clamp(-QMAX, QMAX)
            } else {
                0.0
            };
            q.push(v as i8);
        }
    }
    Ok((q, scales))
}

/// `q · scale[row]` as an f32 tensor of `shape`.
pub fn dequantize(q: &[i8], scales: &[f32], shape: &[usize], device: &Device) -> Result<Tensor> {
    let rows = scales.len();
    let per = q.len() / rows.max(1);
    let values: Vec<f32> = q
        .chunks(per.max(1))
        .zip(scales)
        .flat_map(|(row, &s)| row.iter().map(move |&v| v as f32 * s))
        .collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// One safetensors entry: a candle tensor, or int8 data candle cannot hold.
enum Entry {
    Tensor(Tensor),
    I8 { data: Vec<u8>, shape: Vec<usize> },
}

impl safetensors::View for &Entry {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            Entry::Tensor(t) => <Tensor as safetensors::View>::dtype(t),
            Entry::I8 { .. } => safetensors::Dtype::I8,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Entry::Tensor(t) => t.dims(),
            Entry::I8 { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Entry::Tensor(t) => <Tensor as safetensors::View>::data(t),
            Entry::I8 { data, .. } => Cow::Borrowed(data),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Entry::Tensor(t) => <Tensor as safetensors::View>::data_len(t),
            Entry::I8 { data, .. } => data.len(),
        }
    }
}

/// What [`quantize_tensors`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantSummary {
    /// Weights stored as int8.
    pub quantized: usize,
    /// Tensors kept as f32.
    pub kept: usize,
    /// Largest |w − ŵ| / (scale/2) over all quantised weights (≤ 1 by construction).
    pub max_error_in_half_scales: f32,
}

/// The named f32 tensors of a model as a safetensors buffer with every conv and linear weight
/// ([`is_quantizable`]) as int8 + `<name>_scale`, the rest as f32; diffusers' `{"format": "pt"}`
/// metadata plus `quant_method`.
pub fn quantize_tensors(tensors: &HashMap<String, Tensor>) -> Result<(Vec<u8>, QuantSummary)> {
    let mut entries: Vec<(String, Entry)> = Vec::new();
    let mut summary = QuantSummary::default();
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if is_quantizable(name, t.rank()) {
            let (q, scales) = quantize_per_channel(&t)?;
            let back: Vec<f32> = dequantize(&q, &scales, t.dims(), &Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            let orig: Vec<f32> = t.flatten_all()?.to_vec1()?;
            let per = orig.len() / scales.len().max(1);
            for (i, (a, b)) in orig.iter().zip(&back).enumerate() {
                let half = scales[i / per.max(1)] / 2.0;
                if half > 0.0 {
                    summary.max_error_in_half_scales =
                        summary.max_error_in_half_scales.max((a - b).abs() / half);
                }
            }
            let n = scales.len();
            entries.push((
                format!("{name}{SCALE_SUFFIX}"),
                Entry::Tensor(Tensor::from_vec(scales, n, &Device::Cpu)?),
            ));
            entries.push((
                name.clone(),
                Entry::I8 {
                    data: q.into_iter().map(|v| v as u8).collect(),
                    shape: t.dims().to_vec(),
                },
            ));
            summary.quantized += 1;
        } else {
            entries.push((name.clone(), Entry::Tensor(t.contiguous()?)));
            summary.kept += 1;
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("quant_method".to_string(), QUANT_METHOD.to_string()),
    ]);
    let bytes = safetensors::serialize(entries.iter().map(|(k, e)| (k.as_str(), e)), Some(meta))
        .map_err(|e| Error::Weights(format!("cannot serialize weights: {e}")))?;
    Ok((bytes, summary))
}

/// Quantises model folder `src` (a UNet or DiT: `config.json` + weights, f32/f16/bf16) into
/// `dst` (created): the same config plus `quantization_config`, and the weights with every conv
/// and linear weight as int8 ([`quantize_tensors`]). Both files are written atomically.
pub fn quantize_model_folder(src: &Path, dst: &Path) -> Result<QuantSummary> {
    use crate::weights;
    let (net, varmap) = weights::load::<crate::Network>(src, &Device::Cpu)?;
    let (bytes, summary) = quantize_tensors(&weights::detached_tensors(&varmap))?;
    let mut cfg = serde_json::to_value(net.config()).expect("serializable");
    cfg["quantization_config"] = QuantizationConfig::int8(summary.quantized).to_value();
    weights::write_model_folder(dst, cfg, &bytes)?;
    Ok(summary)
}

/// The tensors of one safetensors buffer (`file` names it in errors), int8 weights
/// dequantised to f32 with their `<name>_scale` (which is consumed). Errors: not a safetensors
/// buffer, an int8 tensor without its scale or with a scale of the wrong shape or values.
pub fn read_safetensors(
    bytes: &[u8],
    file: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    use candle_core::safetensors::Load;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        Error::Weights(format!(
            "{}: not a valid safetensors file ({e})",
            file.display()
        ))
    })?;
    let mut out = HashMap::new();
    let mut int8 = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() == safetensors::Dtype::I8 {
            int8.push((name, view));
        } else {
            let t = view
                .load(device)
                .map_err(|e| Error::Weights(format!("{}: tensor `{name}`: {e}", file.display())))?;
            out.insert(name, t);
        }
    }
    for (name, view) in int8 {
        let scale_name = format!("{name}{SCALE_SUFFIX}");
        let bad = |msg: String| {
            Error::Weights(format!(
                "{}: int8 tensor `{name}`: {msg} (a `diffuse quantize` file stores one f32 scale per output channel)",
                file.display()
            ))
        };
        let shape = view.shape().to_vec();
        let rows = *shape.first().ok_or_else(|| bad("a scalar".into()))?;
        let scale = out
            .remove(&scale_name)
            .ok_or_else(|| bad(format!("its scale `{scale_name}` is missing")))?;
        if scale.dims() != [rows] {
            return Err(bad(format!(
                "its scale `{scale_name}` has shape {:?}, expected [{rows}]",
                scale.dims()
            )));
        }
        let scales: Vec<f32> = scale.to_dtype(DType::F32)?.to_vec1()?;
        if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(bad(format!(
                "its scale `{scale_name}` holds {s}; scales must be finite and ≥ 0"
            )));
        }
        let q: Vec<i8> = view.data().iter().map(|&b| b as i8).collect();
        out.insert(name, dequantize(&q, &scales, &shape, device)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_scale_per_channel() {
        let dev = Device::Cpu;
        // Channels of very different ranges, one all zero, one with a single large value.
        let mut w = Tensor::randn(0f32, 1.0, (6, 3, 3, 3), &dev).unwrap();
        let gains = Tensor::new(&[1f32, 1e-3, 50.0, 0.0, 1.0, 1.0], &dev)
            .unwrap()
            .reshape((6, 1, 1, 1))
            .unwrap();
        w = w.broadcast_mul(&gains).unwrap();
        let (q, scales) = quantize_per_channel(&w).unwrap();
        assert_eq!(scales.len(), 6);
        assert_eq!(scales[3], 0.0);
        let back = dequantize(&q, &scales, w.dims(), &dev).unwrap();
        for (c, &scale) in scales.iter().enumerate() {
            let wc = w.get(c).unwrap();
            let err = max_abs(&(&wc - back.get(c).unwrap()).unwrap());
            assert!(
                err <= scale / 2.0 * (1.0 + 1e-6),
                "channel {c}: {err} > {}",
                scale / 2.0
            );
            assert_eq!(scale, max_abs(&wc) / 127.0);
        }
        // The largest |w| of a channel maps to ±127 exactly.
        assert!(q.iter().any(|&v| v == 127 || v == -127));
        assert!(q.iter().all(|&v| v != -128));
    }

    #[test]
    fn linear_and_conv_weights_are_quantised_tables_and_biases_are_not() {
        assert!(is_quantizable("conv_in.weight", 4));
        assert!(is_quantizable(
            "down_blocks.0.resnets.0.time_emb_proj.weight",
            2
        ));
        assert!(is_quantizable("class_embedding.linear_1.weight", 2));
        assert!(is_quantizable("transformer_blocks.0.attn1.to_q.weight", 2));
        assert!(!is_quantizable("conv_in.bias", 1));
        assert!(!is_quantizable("down_blocks.0.resnets.0.norm1.weight", 1));
        assert!(!is_quantizable("class_embedding.weight", 2));
        assert!(!is_quantizable("time_proj.weight", 2));
        assert!(!is_quantizable(
            "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight",
            2
        ));
    }

    #[test]
    fn file_round_trip_and_clear_errors() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (4, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.2, 4, &dev).unwrap();
        let tensors = HashMap::from([
            ("l.weight".to_string(), w.clone()),
            ("l.bias".into(), b.clone()),
        ]);
        let (bytes, s) = quantize_tensors(&tensors).unwrap();
        assert_eq!((s.quantized, s.kept), (1, 1));
        assert!(
            s.max_error_in_half_scales <= 1.0 + 1e-5,
            "{}",
            s.max_error_in_half_scales
        );
        let f = Path::new("m.safetensors");
        let back = read_safetensors(&bytes, f, &dev).unwrap();
        assert_eq!(back.len(), 2, "the scale is consumed");
        assert_eq!(max_abs(&(&back["l.bias"] - &b).unwrap()), 0.0);
        assert!(max_abs(&(&back["l.weight"] - &w).unwrap()) <= max_abs(&w) / 127.0 / 2.0 * 1.0001);
        // The file really holds int8 (1 byte per weight).
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            st.tensor("l.weight").unwrap().dtype(),
            safetensors::Dtype::I8
        );
        assert_eq!(st.tensor("l.weight_scale").unwrap().shape(), [4]);

        // Missing scale, wrong scale shape, negative scale, garbage.
        let st_entries = |scale: Option<Tensor>| {
            let mut e: Vec<(String, Entry)> = vec![(
                "l.weight".into(),
                Entry::I8 {
                    data: vec![1; 20],
                    shape: vec![4, 5],
                },
            )];
            if let Some(s) = scale {
                e.push(("l.weight_scale".into(), Entry::Tensor(s)));
            }
            safetensors::serialize(e.iter().map(|(k, e)| (k.as_str(), e)), None).unwrap()
        };
        let err = |bytes: &[u8]| read_safetensors(bytes, f, &dev).unwrap_err().to_string();
        let e = err(&st_entries(None));
        assert!(
            e.contains("l.weight_scale") && e.contains("missing") && e.contains("m.safetensors"),
            "{e}"
        );
        let e = err(&st_entries(Some(
            Tensor::ones(5, DType::F32, &dev).unwrap(),
        )));
        assert!(e.contains("shape [5]") && e.contains("[4]"), "{e}");
        let e = err(&st_entries(Some(
            Tensor::new(&[1f32, -1.0, 1.0, 1.0], &dev).unwrap(),
        )));
        assert!(e.contains("≥ 0"), "{e}");
        let e = err(&bytes[..bytes.len() / 2]);
        assert!(e.contains("not a valid safetensors file"), "{e}");
    }

    #[test]
    fn quantised_folder_loads_through_the_one_loader_close_to_fp32() {
        use crate::weights::{load_net, CONFIG_NAME, WEIGHTS_NAME};
        let dev = Device::Cpu;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet_class_cond");
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("q");
        let s = quantize_model_folder(&src, &dst).unwrap();
        assert!(
            s.quantized > 10 && s.max_error_in_half_scales <= 1.0 + 1e-5,
            "{s:?}"
        );
        let size = |d: &Path| std::fs::metadata(d.join(WEIGHTS_NAME)).unwrap().len();
        assert!(
            size(&dst) * 3 < size(&src),
            "{} vs {}",
            size(&dst),
            size(&src)
        );
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dst.join(CONFIG_NAME)).unwrap()).unwrap();
        assert_eq!(cfg["quantization_config"]["quant_method"], QUANT_METHOD);

        // The forward of a UNet and of a DiT stays close to fp32.
        let close = |src: &Path, dst: &Path| {
            let (fp32, _) = load_net(src, &dev).unwrap();
            let (int8, _) = load_net(dst, &dev).unwrap();
            let (h, w) = fp32.sample_hw().unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, fp32.in_channels(), h, w), &dev).unwrap();
            let labels = Tensor::new(&[0u32, 1], &dev).unwrap();
            let labels = fp32.is_class_conditional().then_some(&labels);
            let a = fp32.forward(&x, &[50.0, 500.0], labels).unwrap();
            let b = int8.forward(&x, &[50.0, 500.0], labels).unwrap();
            let rel = max_abs(&(&a - &b).unwrap()) / max_abs(&a);
            assert!(
                rel < 0.03 && rel > 0.0,
                "{}: int8 forward differs by {rel} (relative to max |y|)",
                src.display()
            );
            int8
        };
        let int8 = close(&src, &dst);
        let dit = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dit_p2_rgb");
        let dit_q = tmp.path().join("dit");
        assert!(quantize_model_folder(&dit, &dit_q).unwrap().quantized > 10);
        close(&dit, &dit_q);

        // Saving the loaded model writes float weights and no quantization_config.
        let (_, vm) = crate::weights::load::<crate::Network>(&dst, &dev).unwrap();
        let resaved = tmp.path().join("f32");
        crate::weights::save(&int8.config(), &vm, &resaved, DType::F32).unwrap();
        let text = std::fs::read_to_string(resaved.join(CONFIG_NAME)).unwrap();
        assert!(!text.contains("quantization_config"), "{text}");

        // Unknown method, missing scale: errors that say what and where.
        let bad = tmp.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(dst.join(WEIGHTS_NAME), bad.join(WEIGHTS_NAME)).unwrap();
        let mut c2 = cfg.clone();
        c2["quantization_config"]["quant_method"] = "gptq".into();
        std::fs::write(bad.join(CONFIG_NAME), c2.to_string()).unwrap();
        let e = load_net(&bad, &dev).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("quant_method") && e.contains("gptq") && e.contains("config.json"),
            "{e}"
        );
        std::fs::write(bad.join(CONFIG_NAME), cfg.to_string()).unwrap();
        let st =
            safetensors::SafeTensors::deserialize(&std::fs::read(dst.join(WEIGHTS_NAME)).unwrap())
                .unwrap()
                .tensors()
                .into_iter()
                .filter(|(k, _)| k != "conv_in.weight_scale")
                .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
                .collect::<Vec<_>>();
        struct Raw(safetensors::Dtype, Vec<usize>, Vec<u8>);
        impl safetensors::View for &Raw {
            fn dtype(&self) -> safetensors::Dtype {
                self.0
            }
            fn shape(&self) -> &[usize] {
                &self.1
            }
            fn data(&self) -> Cow<'_, [u8]> {
                Cow::Borrowed(&self.2)
            }
            fn data_len(&self) -> usize {
                self.2.len()
            }
        }
        let raws: Vec<(String, Raw)> = st
            .into_iter()
            .map(|(k, d, s, b)| (k, Raw(d, s, b)))
            .collect();
        let bytes =
            safetensors::serialize(raws.iter().map(|(k, r)| (k.as_str(), r)), None).unwrap();
        std::fs::write(bad.join(WEIGHTS_NAME), bytes).unwrap();
        let e = load_net(&bad, &dev).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("conv_in.weight_scale") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn config_names_the_bad_key() {
        let ok = QuantizationConfig::int8(3).to_value();
        assert_eq!(
            QuantizationConfig::from_value(&ok).unwrap(),
            QuantizationConfig::int8(3)
        );
        let e =
            QuantizationConfig::from_value(&serde_json::json!({"quant_method": "bitsandbytes"}))
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("quant_method") && e.contains("bitsandbytes") && e.contains(QUANT_METHOD),
            "{e}"
        );
        let e = QuantizationConfig::from_value(
            &serde_json::json!({"quant_method": QUANT_METHOD, "bits": 4}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("quantization_config.bits"), "{e}");
        let e = QuantizationConfig::from_value(&serde_json::json!({"bits": 8}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("quant_method") && e.contains("missing"), "{e}");
    }
}

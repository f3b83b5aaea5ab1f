//! A small ONNX graph builder: nodes appended in execution order (so already topologically
//! sorted), weights as `raw_data` initializers under diffusers' names, and the composite layers
//! the models share, written with the decompositions torch.onnx uses at opset 17:
//!
//! - GroupNorm (torch.onnx `symbolic_opset9.group_norm`): Reshape `[b, G, -1]` →
//!   InstanceNormalization (scale 1, bias 0) → Reshape back → Mul γ → Add β.
//! - SiLU: `x · Sigmoid(x)`; GELU: the tanh formula or `Erf` (opset 17 has no `Gelu`).
//! - Linear: `Gemm(transB=1)` on 2-D inputs, `MatMul(x, Wᵀ) + b` on 3-D ones.
//! - Attention: `Softmax(q kᵀ · scale [+ mask]) v` with `MatMul`s over `[b, heads, L, d]`, keys
//!   and values from the same sequence or another (cross-attention).
//!
//! Names are deterministic (a counter in call order), so the same model gives the same bytes.

use super::proto::{
    attribute_type, AttributeProto, DimValue, Dimension, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto, FLOAT, INT64,
};
use crate::ops;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// The weights of one multi-head attention: the q, k, v and output projections under their
/// names (the prefix of `.weight` / `.bias`), and the head layout.
pub(crate) struct AttentionWeights<'a> {
    pub(crate) names: [String; 4],
    pub(crate) proj: [&'a candle_nn::Linear; 4],
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
}

impl<'a> AttentionWeights<'a> {
    /// diffusers' names: `{name}.to_q`, `{name}.to_k`, `{name}.to_v`, `{name}.to_out.0`.
    pub(crate) fn diffusers(
        name: &str,
        proj: [&'a candle_nn::Linear; 4],
        heads: usize,
        head_dim: usize,
    ) -> Self {
        AttentionWeights {
            names: ["to_q", "to_k", "to_v", "to_out.0"].map(|p| format!("{name}.{p}")),
            proj,
            heads,
            head_dim,
        }
    }
}

/// An attribute value.
pub(crate) enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(&'static str),
}

fn attribute(name: &str, a: &Attr) -> AttributeProto {
    let mut p = AttributeProto {
        name: Some(name.into()),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.i = Some(*i);
            p.r#type = Some(attribute_type::INT);
        }
        Attr::Float(f) => {
            p.f = Some(*f);
            p.r#type = Some(attribute_type::FLOAT);
        }
        Attr::Ints(v) => {
            p.ints = v.clone();
            p.r#type = Some(attribute_type::INTS);
        }
        Attr::Str(s) => {
            p.s = Some(s.as_bytes().to_vec());
            p.r#type = Some(attribute_type::STRING);
        }
    }
    p
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone)]
pub(crate) enum Dim {
    Fixed(usize),
    /// A symbolic size (`dim_param`), e.g. "batch".
    Named(&'static str),
}

/// The spatial sizes of a graph that takes any image size.
pub(crate) const ANY_HW: [Dim; 2] = [Dim::Named("height"), Dim::Named("width")];

/// A float32 NCHW image input or output, `[batch, channels, h, w]`.
pub(crate) fn image_value(
    name: &str,
    batch: &Dim,
    channels: usize,
    [h, w]: [Dim; 2],
) -> ValueInfoProto {
    value_info(name, FLOAT, &[batch.clone(), Dim::Fixed(channels), h, w])
}

/// A graph input or output of element type `elem` ([`FLOAT`], [`INT64`]).
pub(crate) fn value_info(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => DimValue::DimValue(*n as i64),
                Dim::Named(s) => DimValue::DimParam((*s).into()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            }),
            denotation: None,
        }),
        doc_string: None,
    }
}

/// ONNX's protobuf files cannot exceed 2 GiB; weights beyond this would need external data.
const MAX_WEIGHT_BYTES: usize = 2_000_000_000;

/// The graph under construction.
#[derive(Default)]
pub(crate) struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
    i64_consts: HashMap<Vec<i64>, String>,
    f32_consts: HashMap<(Vec<usize>, Vec<u32>), String>,
    counter: usize,
    weight_bytes: usize,
}

impl Graph {
    /// Appends a node with one output; returns the output's name.
    pub(crate) fn op(
        &mut self,
        op: &str,
        scope: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        self.op_n(op, scope, inputs, 1, attrs).remove(0)
    }

    /// Appends a node with `n` outputs.
    pub(crate) fn op_n(
        &mut self,
        op: &str,
        scope: &str,
        inputs: &[&str],
        n: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let name = format!("/{scope}/{op}_{}", self.counter);
        self.counter += 1;
        let output: Vec<String> = (0..n).map(|i| format!("{name}_output_{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name: Some(name),
            op_type: Some(op.into()),
            attribute: attrs.iter().map(|(k, a)| attribute(k, a)).collect(),
            ..Default::default()
        });
        output
    }

    fn add_initializer(&mut self, t: TensorProto) -> Result<String> {
        let name = t.name.clone().expect("named");
        if !self.names.insert(name.clone()) {
            return Err(Error::Input(format!(
                "ONNX export: two weights named `{name}` (an exporter bug)"
            )));
        }
        self.weight_bytes += t.raw_data.as_ref().map_or(0, |d| d.len());
        if self.weight_bytes > MAX_WEIGHT_BYTES {
            return Err(Error::Input(format!(
                "ONNX export: the weights exceed {} GB, the most one .onnx file can hold \
                 (protobuf's 2 GiB limit; external-data files are not written)",
                MAX_WEIGHT_BYTES / 1_000_000_000
            )));
        }
        self.initializers.push(t);
        Ok(name)
    }

    /// A float32 initializer named `name` (a diffusers weight name) holding `t`.
    pub(crate) fn weight(&mut self, name: &str, t: &Tensor) -> Result<String> {
        let dims = t.dims().to_vec();
        let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        self.f32_tensor(name, &dims, &v)
    }

    /// Like [`Self::weight`], but a second call with the same name returns the first one's
    /// initializer (a weight used in two places, e.g. the time projection of a UNet's
    /// `timestep` class embedding).
    pub(crate) fn shared_weight(&mut self, name: &str, t: &Tensor) -> Result<String> {
        if self.names.contains(name) {
            Ok(name.to_string())
        } else {
            self.weight(name, t)
        }
    }

    fn f32_tensor(&mut self, name: &str, dims: &[usize], v: &[f32]) -> Result<String> {
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_initializer(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(FLOAT),
            name: Some(name.into()),
            raw_data: Some(raw),
            ..Default::default()
        })
    }

    /// A float32 constant (shared between uses with the same shape and values).
    pub(crate) fn const_f32(&mut self, dims: &[usize], v: &[f32]) -> String {
        let key = (dims.to_vec(), v.iter().map(|x| x.to_bits()).collect());
        if let Some(n) = self.f32_consts.get(&key) {
            return n.clone();
        }
        let name = format!("/const/f32_{}", self.f32_consts.len());
        self.f32_tensor(&name, dims, v)
            .expect("unique constant name");
        self.f32_consts.insert(key, name.clone());
        name
    }

    /// A 1-D int64 constant (shapes, axes, pads), shared between uses.
    pub(crate) fn const_i64(&mut self, v: &[i64]) -> String {
        if let Some(n) = self.i64_consts.get(v) {
            return n.clone();
        }
        let name = format!("/const/i64_{}", self.i64_consts.len());
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_initializer(TensorProto {
            dims: vec![v.len() as i64],
            data_type: Some(INT64),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        })
        .expect("unique constant name");
        self.i64_consts.insert(v.to_vec(), name.clone());
        name
    }

    /// The graph with these inputs and outputs; the value `result` (made by the last node) is
    /// renamed `output_name`, the name of the graph's output.
    pub(crate) fn finish(
        self,
        name: &str,
        result: &str,
        output_name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> GraphProto {
        assert!(
            self.nodes
                .last()
                .is_some_and(|n| n.output.iter().any(|o| o == result)),
            "the result is the last node's output"
        );
        self.finish_many(name, &[(result, output_name)], inputs, outputs)
    }

    /// The graph with several outputs: each `(value, output name)` renames a node output
    /// (wherever later nodes read it too) to the name of a graph output.
    pub(crate) fn finish_many(
        mut self,
        name: &str,
        results: &[(&str, &str)],
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> GraphProto {
        for &(value, output_name) in results {
            let mut made = false;
            for node in &mut self.nodes {
                for o in node.output.iter_mut().filter(|o| *o == value) {
                    *o = output_name.to_string();
                    made = true;
                }
                for i in node.input.iter_mut().filter(|i| *i == value) {
                    *i = output_name.to_string();
                }
            }
            assert!(made, "graph output {output_name}: no node makes {value}");
        }
        GraphProto {
            node: self.nodes,
            name: Some(name.into()),
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }

    // ------------------------------------------------------------------ elementwise helpers

    pub(crate) fn add(&mut self, scope: &str, a: &str, b: &str) -> String {
        self.op("Add", scope, &[a, b], &[])
    }

    pub(crate) fn mul(&mut self, scope: &str, a: &str, b: &str) -> String {
        self.op("Mul", scope, &[a, b], &[])
    }

    /// `x · c` for a scalar constant.
    pub(crate) fn mul_scalar(&mut self, scope: &str, x: &str, c: f32) -> String {
        let c = self.const_f32(&[], &[c]);
        self.mul(scope, x, &c)
    }

    /// `x + c` for a scalar constant.
    pub(crate) fn add_scalar(&mut self, scope: &str, x: &str, c: f32) -> String {
        let c = self.const_f32(&[], &[c]);
        self.add(scope, x, &c)
    }

    /// `x / c` for a scalar constant (a division, as candle's `x / c`).
    pub(crate) fn div_scalar(&mut self, scope: &str, x: &str, c: f32) -> String {
        let c = self.const_f32(&[], &[c]);
        self.op("Div", scope, &[x, &c], &[])
    }

    /// SiLU: `x · Sigmoid(x)`.
    pub(crate) fn silu(&mut self, scope: &str, x: &str) -> String {
        let s = self.op("Sigmoid", scope, &[x], &[]);
        self.mul(scope, x, &s)
    }

    /// Exact GELU: 0.5·x·(1 + erf(x/√2)) (torch's `F.gelu`, opset 17 has no `Gelu`).
    pub(crate) fn gelu_erf(&mut self, scope: &str, x: &str) -> String {
        let s = self.mul_scalar(scope, x, std::f32::consts::FRAC_1_SQRT_2);
        let e = self.op("Erf", scope, &[&s], &[]);
        let e = self.add_scalar(scope, &e, 1.0);
        let y = self.mul(scope, x, &e);
        self.mul_scalar(scope, &y, 0.5)
    }

    /// torch's `gelu(approximate="tanh")`: 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²))).
    pub(crate) fn gelu_tanh(&mut self, scope: &str, x: &str) -> String {
        let x2 = self.mul(scope, x, x);
        let inner = self.mul_scalar(scope, &x2, 0.044715);
        let inner = self.add_scalar(scope, &inner, 1.0);
        let inner = self.mul(scope, x, &inner);
        let inner = self.mul_scalar(scope, &inner, (2.0 / std::f64::consts::PI).sqrt() as f32);
        let th = self.op("Tanh", scope, &[&inner], &[]);
        let th = self.add_scalar(scope, &th, 1.0);
        let y = self.mul(scope, x, &th);
        self.mul_scalar(scope, &y, 0.5)
    }

    /// CLIP's quick GELU: `x · Sigmoid(1.702·x)`.
    pub(crate) fn quick_gelu(&mut self, scope: &str, x: &str) -> String {
        let z = self.mul_scalar(scope, x, 1.702);
        let s = self.op("Sigmoid", scope, &[&z], &[]);
        self.mul(scope, x, &s)
    }

    /// `Shape(x)[start..end]` (opset 15's `start`/`end` attributes; `end` None: to the last).
    pub(crate) fn shape_range(
        &mut self,
        scope: &str,
        x: &str,
        start: i64,
        end: Option<i64>,
    ) -> String {
        let mut attrs = vec![("start", Attr::Int(start))];
        if let Some(e) = end {
            attrs.push(("end", Attr::Int(e)));
        }
        self.op("Shape", scope, &[x], &attrs)
    }

    /// `Reshape(x, shape)` (0 copies the input's size, −1 infers one).
    pub(crate) fn reshape(&mut self, scope: &str, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64(shape);
        self.op("Reshape", scope, &[x, &s], &[])
    }

    pub(crate) fn transpose(&mut self, scope: &str, x: &str, perm: &[i64]) -> String {
        self.op(
            "Transpose",
            scope,
            &[x],
            &[("perm", Attr::Ints(perm.to_vec()))],
        )
    }

    pub(crate) fn unsqueeze(&mut self, scope: &str, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.op("Unsqueeze", scope, &[x, &a], &[])
    }

    /// Splits `x` into `n` equal parts along `axis`.
    pub(crate) fn split(&mut self, scope: &str, x: &str, axis: i64, n: usize) -> Vec<String> {
        self.op_n("Split", scope, &[x], n, &[("axis", Attr::Int(axis))])
    }

    // ------------------------------------------------------------------ layers

    /// `Conv` with the layer's stride and symmetric padding, or `pads` ([top, left, bottom,
    /// right]) when given; weights `{name}.weight`, `{name}.bias`.
    pub(crate) fn conv(
        &mut self,
        name: &str,
        x: &str,
        conv: &candle_nn::Conv2d,
        pads: Option<[i64; 4]>,
    ) -> Result<String> {
        let cfg = conv.config();
        if cfg.dilation != 1 || cfg.groups != 1 {
            return Err(Error::Input(format!(
                "ONNX export: `{name}` has dilation {} / groups {}; only plain convolutions are exported",
                cfg.dilation, cfg.groups
            )));
        }
        let (_, _, kh, kw) = conv.weight().dims4()?;
        let w = self.weight(&format!("{name}.weight"), conv.weight())?;
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = conv.bias() {
            inputs.push(self.weight(&format!("{name}.bias"), b)?);
        }
        let p = cfg.padding as i64;
        let s = cfg.stride as i64;
        let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        Ok(self.op(
            "Conv",
            name,
            &inputs,
            &[
                ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                ("pads", Attr::Ints(pads.unwrap_or([p, p, p, p]).to_vec())),
                ("strides", Attr::Ints(vec![s, s])),
            ],
        ))
    }

    /// `x Wᵀ + b` over the last dimension; `rank` is x's rank (2: one Gemm).
    pub(crate) fn linear(
        &mut self,
        name: &str,
        x: &str,
        l: &candle_nn::Linear,
        rank: usize,
    ) -> Result<String> {
        let w = self.weight(&format!("{name}.weight"), l.weight())?;
        let b = match l.bias() {
            Some(b) => Some(self.weight(&format!("{name}.bias"), b)?),
            None => None,
        };
        if rank == 2 {
            let mut inputs = vec![x, w.as_str()];
            if let Some(b) = &b {
                inputs.push(b);
            }
            return Ok(self.op("Gemm", name, &inputs, &[("transB", Attr::Int(1))]));
        }
        let wt = self.transpose(name, &w, &[1, 0]);
        let y = self.op("MatMul", name, &[x, &wt], &[]);
        Ok(match b {
            Some(b) => self.add(name, &y, &b),
            None => y,
        })
    }

    /// GroupNorm of `x` [b, c, …] (`{name}.weight`, `{name}.bias`), then SiLU when asked.
    pub(crate) fn group_norm(
        &mut self,
        name: &str,
        x: &str,
        norm: &ops::GroupNorm,
        then_silu: bool,
    ) -> Result<String> {
        let g = norm.groups;
        let shape = self.op("Shape", name, &[x], &[]);
        let grouped = self.reshape(name, x, &[0, g as i64, -1]); // [b, G, c/G·h·w]
        let ones = self.const_f32(&[g], &vec![1.0; g]);
        let zeros = self.const_f32(&[g], &vec![0.0; g]);
        let n = self.op(
            "InstanceNormalization",
            name,
            &[&grouped, &ones, &zeros],
            &[("epsilon", Attr::Float(norm.eps as f32))],
        );
        let n = self.op("Reshape", name, &[&n, &shape], &[]); // [b, c, h, w]
        let w = self.weight(&format!("{name}.weight"), &norm.weight)?;
        let b = self.weight(&format!("{name}.bias"), &norm.bias)?;
        let w = self.unsqueeze(name, &w, &[1, 2]); // [c, 1, 1]
        let b = self.unsqueeze(name, &b, &[1, 2]);
        let y = self.mul(name, &n, &w);
        let y = self.add(name, &y, &b);
        Ok(if then_silu { self.silu(name, &y) } else { y })
    }

    /// LayerNorm over the last dimension (width `dim`), affine when weights are given.
    pub(crate) fn layer_norm(
        &mut self,
        name: &str,
        x: &str,
        dim: usize,
        eps: f64,
        affine: Option<(&Tensor, &Tensor)>,
    ) -> Result<String> {
        let (scale, bias) = match affine {
            Some((w, b)) => (
                self.weight(&format!("{name}.weight"), w)?,
                Some(self.weight(&format!("{name}.bias"), b)?),
            ),
            None => (self.const_f32(&[dim], &vec![1.0; dim]), None),
        };
        let mut inputs = vec![x, scale.as_str()];
        if let Some(b) = &bias {
            inputs.push(b);
        }
        Ok(self.op(
            "LayerNormalization",
            name,
            &inputs,
            &[
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(eps as f32)),
            ],
        ))
    }

    /// Multi-head self-attention over `seq` [b, L, c] (no norm, no residual): the four
    /// projections `{name}.to_q/k/v`, `{name}.to_out.0`. Returns [b, L, c].
    pub(crate) fn self_attention(
        &mut self,
        name: &str,
        seq: &str,
        attn: &crate::attention::Attention,
    ) -> Result<String> {
        self.cross_attention(name, seq, seq, attn)
    }

    /// [`Self::self_attention`] with keys and values from `context` [b, Lc, c_ctx] (diffusers'
    /// `attn2` over the text encoder's hidden states).
    pub(crate) fn cross_attention(
        &mut self,
        name: &str,
        seq: &str,
        context: &str,
        attn: &crate::attention::Attention,
    ) -> Result<String> {
        let w = AttentionWeights::diffusers(
            name,
            [&attn.to_q, &attn.to_k, &attn.to_v, &attn.to_out],
            attn.heads,
            attn.head_dim,
        );
        self.attention(name, &w, seq, context, None)
    }

    /// softmax(q kᵀ / √d) v over one sequence with diffusers' projections `[to_q, to_k, to_v,
    /// to_out]` (weights `{name}.to_q`, …, `{name}.to_out.0`).
    pub(crate) fn attention_core(
        &mut self,
        name: &str,
        seq: &str,
        proj: [&candle_nn::Linear; 4],
        heads: usize,
        head_dim: usize,
    ) -> Result<String> {
        let w = AttentionWeights::diffusers(name, proj, heads, head_dim);
        self.attention(name, &w, seq, seq, None)
    }

    /// Multi-head attention: queries from `q_in` [b, Lq, ·], keys and values from `kv_in` [b,
    /// Lk, ·] (the same value for self-attention), softmax(q kᵀ / √d + mask) v, then the output
    /// projection; `mask` an additive bias broadcasting to [b, heads, Lq, Lk]. Returns
    /// [b, Lq, c_out]. Nodes are scoped `scope`.
    pub(crate) fn attention(
        &mut self,
        scope: &str,
        w: &AttentionWeights,
        q_in: &str,
        kv_in: &str,
        mask: Option<&str>,
    ) -> Result<String> {
        let (h, d) = (w.heads as i64, w.head_dim as i64);
        let q = self.linear(&w.names[0], q_in, w.proj[0], 3)?;
        let k = self.linear(&w.names[1], kv_in, w.proj[1], 3)?;
        let v = self.linear(&w.names[2], kv_in, w.proj[2], 3)?;
        // [b, L, h·d] → [b, L, h, d] → [b, h, L, d] (kᵀ: [b, h, d, Lk])
        let q = self.reshape(scope, &q, &[0, 0, h, d]);
        let q = self.transpose(scope, &q, &[0, 2, 1, 3]);
        let k = self.reshape(scope, &k, &[0, 0, h, d]);
        let kt = self.transpose(scope, &k, &[0, 2, 3, 1]);
        let v = self.reshape(scope, &v, &[0, 0, h, d]);
        let v = self.transpose(scope, &v, &[0, 2, 1, 3]);
        let s = self.op("MatMul", scope, &[&q, &kt], &[]); // [b, h, Lq, Lk]
        let s = self.mul_scalar(scope, &s, (1.0 / (w.head_dim as f64).sqrt()) as f32);
        let s = match mask {
            Some(m) => self.add(scope, &s, m),
            None => s,
        };
        let p = self.op("Softmax", scope, &[&s], &[("axis", Attr::Int(-1))]);
        let o = self.op("MatMul", scope, &[&p, &v], &[]); // [b, h, Lq, d]
        let o = self.transpose(scope, &o, &[0, 2, 1, 3]);
        let o = self.reshape(scope, &o, &[0, 0, h * d]); // [b, Lq, h·d]
        self.linear(&w.names[3], &o, w.proj[3], 3)
    }

    /// Nearest-neighbour 2× upsampling of [b, c, h, w] (torch.onnx's `upsample_nearest2d`).
    pub(crate) fn upsample_nearest2x(&mut self, scope: &str, x: &str) -> String {
        let scales = self.const_f32(&[4], &[1.0, 1.0, 2.0, 2.0]);
        self.op(
            "Resize",
            scope,
            &[x, "", &scales],
            &[
                ("coordinate_transformation_mode", Attr::Str("asymmetric")),
                ("mode", Attr::Str("nearest")),
                ("nearest_mode", Attr::Str("floor")),
            ],
        )
    }

    /// Nearest-neighbour upsampling of [b, c, h, w] to the spatial size `hw` (an int64 [2]
    /// value), torch's `F.interpolate(size=…)`: source index ⌊i · in/out⌋ (asymmetric, floor).
    pub(crate) fn upsample_nearest_to(&mut self, scope: &str, x: &str, hw: &str) -> String {
        let bc = self.shape_range(scope, x, 0, Some(2));
        let sizes = self.op("Concat", scope, &[&bc, hw], &[("axis", Attr::Int(0))]);
        self.op(
            "Resize",
            scope,
            &[x, "", "", &sizes],
            &[
                ("coordinate_transformation_mode", Attr::Str("asymmetric")),
                ("mode", Attr::Str("nearest")),
                ("nearest_mode", Attr::Str("floor")),
            ],
        )
    }

    /// 2×2 average pooling, stride 2.
    pub(crate) fn avg_pool2x(&mut self, scope: &str, x: &str) -> String {
        self.op(
            "AveragePool",
            scope,
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        )
    }
}

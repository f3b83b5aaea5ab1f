//! `UNet2DModel` (diffusers `models/unets/unet_2d.py`) as an ONNX graph, and the parts the VAE
//! decoder shares with it: `ResnetBlock2D` (`models/resnet.py`), the spatial `Attention`, the
//! down/up/mid blocks (`unet_2d_blocks.py`) and the time projections (`embeddings.py`:
//! `get_timestep_embedding`, `GaussianFourierProjection`). Each function mirrors the candle
//! `forward` of the same module, op for op. The blocks also carry `UNet2DConditionModel`'s
//! cross-attention transformers (`super::unet_cond`), reading the text states of [`Cond`].

use super::graph::{image_value, Attr, Dim, Graph, ANY_HW};
use super::proto::{ModelProto, FLOAT, INT64};
use crate::attention::SpatialAttention;
use crate::blocks::{BlockAttention, Down, DownBlock, MidBlock, Up, UpBlock};
use crate::config::TimeEmbeddingType;
use crate::embeddings::{TimeProjection, TimestepEmbedding};
use crate::resnet::{Resample, ResnetBlock2D, TimeNorm};
use crate::unet_2d::{ClassEmb, UNet2DModel};
use crate::{Error, Result};

/// What a block's layers read besides the feature map: SiLU of the UNet's embedding [b, temb]
/// for its ResNets (None in the VAE), and the encoder hidden states [b, L, ctx] for its
/// cross-attention transformers (None but in a `UNet2DConditionModel`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cond<'a> {
    pub(crate) temb_silu: Option<&'a str>,
    pub(crate) context: Option<&'a str>,
}

/// `ResnetBlock2D`; `temb_silu` is SiLU of the UNet's embedding [b, temb] (None in the VAE).
pub(crate) fn resnet(
    g: &mut Graph,
    name: &str,
    x: &str,
    r: &ResnetBlock2D,
    temb_silu: Option<&str>,
) -> Result<String> {
    let mut h = g.group_norm(&format!("{name}.norm1"), x, &r.norm1, true)?;
    let mut x = x.to_string();
    match r.resample {
        Resample::Up => {
            x = g.upsample_nearest2x(name, &x);
            h = g.upsample_nearest2x(name, &h);
        }
        Resample::Down => {
            x = g.avg_pool2x(name, &x);
            h = g.avg_pool2x(name, &h);
        }
        Resample::None => {}
    }
    let t = match (&r.time_emb_proj, temb_silu) {
        (Some(p), Some(t)) => {
            let t = g.linear(&format!("{name}.time_emb_proj"), t, p, 2)?; // [b, c']
            Some(g.unsqueeze(name, &t, &[2, 3])) // [b, c', 1, 1]
        }
        _ => None,
    };
    let h = g.conv(&format!("{name}.conv1"), &h, &r.conv1, None)?;
    let norm2 = format!("{name}.norm2");
    let h = match (r.opts.time_norm, t) {
        (TimeNorm::Default, Some(t)) => {
            let h = g.add(name, &h, &t);
            g.group_norm(&norm2, &h, &r.norm2, true)?
        }
        (TimeNorm::ScaleShift, Some(t)) => {
            let parts = g.split(name, &t, 1, 2); // scale, shift: [b, c, 1, 1]
            let n = g.group_norm(&norm2, &h, &r.norm2, false)?;
            let s1 = g.add_scalar(name, &parts[0], 1.0);
            let y = g.mul(name, &n, &s1);
            let y = g.add(name, &y, &parts[1]);
            g.silu(name, &y)
        }
        (_, None) => g.group_norm(&norm2, &h, &r.norm2, true)?,
    };
    let h = g.conv(&format!("{name}.conv2"), &h, &r.conv2, None)?;
    let x = match &r.conv_shortcut {
        Some(c) => g.conv(&format!("{name}.conv_shortcut"), &x, c, None)?,
        None => x,
    };
    let out = g.add(name, &x, &h);
    Ok(match r.opts.output_scale_factor {
        1.0 => out,
        f => g.div_scalar(name, &out, f as f32),
    })
}

/// Spatial self-attention over the h·w positions of [b, c, h, w], residual included.
fn spatial_attention(g: &mut Graph, name: &str, x: &str, a: &SpatialAttention) -> Result<String> {
    let normed = match &a.group_norm {
        Some(n) => g.group_norm(&format!("{name}.group_norm"), x, n, false)?,
        None => x.to_string(),
    };
    let shape = g.op("Shape", name, &[x], &[]);
    let c = a.to_out.weight().dim(0)? as i64;
    let seq = g.reshape(name, &normed, &[0, c, -1]); // [b, c, L]
    let seq = g.transpose(name, &seq, &[0, 2, 1]); // [b, L, c]
    let o = g.attention_core(
        name,
        &seq,
        [&a.to_q, &a.to_k, &a.to_v, &a.to_out],
        a.heads,
        a.head_dim,
    )?;
    let o = g.transpose(name, &o, &[0, 2, 1]); // [b, c, L]
    let o = g.op("Reshape", name, &[&o, &shape], &[]); // [b, c, h, w]
    let out = g.add(name, &o, x);
    Ok(match a.rescale_output_factor {
        1.0 => out,
        f => g.div_scalar(name, &out, f as f32),
    })
}

/// The attention after a ResNet: the spatial self-attention of UNet2DModel and the VAE, or a
/// cross-attention transformer of UNet2DConditionModel over `context`.
fn block_attention(
    g: &mut Graph,
    name: &str,
    x: &str,
    a: &BlockAttention,
    context: Option<&str>,
) -> Result<String> {
    match (a, context) {
        (BlockAttention::Spatial(a), _) => spatial_attention(g, name, x, a),
        (BlockAttention::Transformer(t), Some(ctx)) => {
            super::unet_cond::transformer_2d(g, name, x, t, ctx)
        }
        (BlockAttention::Transformer(_), None) => Err(Error::Input(format!(
            "{name}: a cross-attention block needs encoder hidden states (an exporter bug)"
        ))),
    }
}

/// A down block: returns the output and the skip states it leaves.
pub(crate) fn down_block(
    g: &mut Graph,
    name: &str,
    x: &str,
    d: &DownBlock,
    cond: Cond,
) -> Result<(String, Vec<String>)> {
    let temb_silu = cond.temb_silu;
    let mut h = x.to_string();
    let mut states = Vec::new();
    for (i, r) in d.resnets.iter().enumerate() {
        h = resnet(g, &format!("{name}.resnets.{i}"), &h, r, temb_silu)?;
        if let Some(a) = d.attentions.get(i) {
            h = block_attention(g, &format!("{name}.attentions.{i}"), &h, a, cond.context)?;
        }
        states.push(h.clone());
    }
    if let Some(down) = &d.down {
        let n = format!("{name}.downsamplers.0");
        h = match down {
            Down::Conv(c) => {
                // padding 0: pad right and bottom by one, as diffusers' Downsample2D.
                let pads = (c.padding == 0).then_some([0, 0, 1, 1]);
                g.conv(&format!("{n}.conv"), &h, &c.conv, pads)?
            }
            Down::Resnet(r) => resnet(g, &n, &h, r, temb_silu)?,
        };
        states.push(h.clone());
    }
    Ok((h, states))
}

/// An up block; `skips` are its own skip states in the order they were made. `upsample_to`:
/// the spatial size [h, w] (an int64 value) its conv upsampler resizes to instead of 2×, as
/// `UNet2DConditionModel` meets the next block's skip states.
pub(crate) fn up_block(
    g: &mut Graph,
    name: &str,
    x: &str,
    skips: &[String],
    u: &UpBlock,
    cond: Cond,
    upsample_to: Option<&str>,
) -> Result<String> {
    let temb_silu = cond.temb_silu;
    let mut h = x.to_string();
    for (i, r) in u.resnets.iter().enumerate() {
        if u.takes_skips {
            let skip = &skips[skips.len() - 1 - i];
            h = g.op("Concat", name, &[&h, skip], &[("axis", Attr::Int(1))]); // [b, c + c_skip, h, w]
        }
        h = resnet(g, &format!("{name}.resnets.{i}"), &h, r, temb_silu)?;
        if let Some(a) = u.attentions.get(i) {
            h = block_attention(g, &format!("{name}.attentions.{i}"), &h, a, cond.context)?;
        }
    }
    if let Some(up) = &u.up {
        let n = format!("{name}.upsamplers.0");
        h = match up {
            Up::Conv(c) => {
                let h = match upsample_to {
                    Some(hw) => g.upsample_nearest_to(&n, &h, hw),
                    None => g.upsample_nearest2x(&n, &h),
                };
                g.conv(&format!("{n}.conv"), &h, &c.conv, None)?
            }
            Up::Resnet(r) => resnet(g, &n, &h, r, temb_silu)?,
        };
    }
    Ok(h)
}

/// `UNetMidBlock2D`: ResNet → attention → ResNet.
pub(crate) fn mid_block(
    g: &mut Graph,
    name: &str,
    x: &str,
    m: &MidBlock,
    cond: Cond,
) -> Result<String> {
    let temb_silu = cond.temb_silu;
    let mut h = resnet(g, &format!("{name}.resnets.0"), x, &m.resnets[0], temb_silu)?;
    if let Some(a) = &m.attention {
        h = block_attention(g, &format!("{name}.attentions.0"), &h, a, cond.context)?;
    }
    resnet(
        g,
        &format!("{name}.resnets.1"),
        &h,
        &m.resnets[1],
        temb_silu,
    )
}

/// diffusers' `get_timestep_embedding` of `t` [b] (float32) → [b, dim], computed in the graph
/// with the frequencies diffuse uses (`exp(−ln 10000 · i / (half − freq_shift))` in f32).
pub(crate) fn sinusoid(
    g: &mut Graph,
    scope: &str,
    t: &str,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> String {
    let half = dim / 2;
    let log_max = -(10000f64.ln() as f32);
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_max * i as f32 / denom).exp())
        .collect();
    let freqs = g.const_f32(&[1, half], &freqs);
    let t = g.unsqueeze(scope, t, &[1]); // [b, 1]
    let args = g.mul(scope, &t, &freqs); // [b, half]
    let sin = g.op("Sin", scope, &[&args], &[]);
    let cos = g.op("Cos", scope, &[&args], &[]);
    let parts = if flip_sin_to_cos {
        [&cos, &sin]
    } else {
        [&sin, &cos]
    };
    let emb = g.op(
        "Concat",
        scope,
        &[parts[0], parts[1]],
        &[("axis", Attr::Int(1))],
    );
    if dim % 2 == 1 {
        let pads = g.const_i64(&[0, 0, 0, 1]);
        g.op("Pad", scope, &[&emb, &pads], &[])
    } else {
        emb
    }
}

/// The UNet's time projection of float32 values `t` [b] (`time_proj`, weights shared between
/// the timestep and a `timestep` class embedding).
pub(crate) fn time_projection(g: &mut Graph, t: &str, p: &TimeProjection) -> Result<String> {
    let scope = "time_proj";
    Ok(match p {
        TimeProjection::Positional {
            dim,
            flip_sin_to_cos,
            freq_shift,
        } => sinusoid(g, scope, t, *dim, *flip_sin_to_cos, *freq_shift),
        TimeProjection::Fourier { weight } => {
            // [sin, cos](log(t) · w · 2π)
            let w = g.shared_weight("time_proj.weight", weight)?;
            let lt = g.op("Log", scope, &[t], &[]);
            let lt = g.unsqueeze(scope, &lt, &[1]); // [b, 1]
            let p = g.mul(scope, &lt, &w); // [b, c]
            let p = g.mul_scalar(scope, &p, 2.0 * std::f32::consts::PI);
            let sin = g.op("Sin", scope, &[&p], &[]);
            let cos = g.op("Cos", scope, &[&p], &[]);
            g.op("Concat", scope, &[&sin, &cos], &[("axis", Attr::Int(1))])
        }
        TimeProjection::Learned { table } => {
            // nn.Embedding indexed by the integer timestep (truncated, as diffuse's `t as u32`)
            let w = g.shared_weight("time_proj.weight", table.embeddings())?;
            let i = g.op("Cast", scope, &[t], &[("to", Attr::Int(INT64 as i64))]);
            g.op("Gather", scope, &[&w, &i], &[("axis", Attr::Int(0))])
        }
    })
}

/// `TimestepEmbedding`: Gemm → SiLU → Gemm over [b, in].
pub(crate) fn timestep_mlp(
    g: &mut Graph,
    name: &str,
    x: &str,
    e: &TimestepEmbedding,
) -> Result<String> {
    let h = g.linear(&format!("{name}.linear_1"), x, &e.linear_1, 2)?;
    let h = g.silu(name, &h);
    g.linear(&format!("{name}.linear_2"), &h, &e.linear_2, 2)
}

/// The graph of a `UNet2DModel`: inputs `sample` [batch, in, height, width] f32, `timestep`
/// [batch] f32 and, when class-conditional, `class_labels` ([batch] int64, or [batch,
/// time_embed_dim] f32 for `class_embed_type` "identity"); output `out_sample`.
pub(crate) fn export(m: &UNet2DModel) -> Result<ModelProto> {
    let c = &m.config;
    let mut g = Graph::default();
    let batch = Dim::Named("batch");
    let mut inputs = vec![
        image_value("sample", &batch, c.in_channels, ANY_HW),
        super::graph::value_info("timestep", FLOAT, std::slice::from_ref(&batch)),
    ];
    let x = if c.center_input_sample {
        let x = g.mul_scalar("center_input_sample", "sample", 2.0);
        g.add_scalar("center_input_sample", &x, -1.0)
    } else {
        "sample".to_string()
    };
    let t_emb = time_projection(&mut g, "timestep", &m.time_proj)?;
    let mut emb = timestep_mlp(&mut g, "time_embedding", &t_emb, &m.time_embedding)?; // [b, temb]
    let class = match &m.class_embedding {
        ClassEmb::None => None,
        ClassEmb::Table(t) => {
            inputs.push(super::graph::value_info(
                "class_labels",
                INT64,
                std::slice::from_ref(&batch),
            ));
            let w = g.weight("class_embedding.weight", t.embeddings())?;
            Some(g.op(
                "Gather",
                "class_embedding",
                &[&w, "class_labels"],
                &[("axis", Attr::Int(0))],
            ))
        }
        ClassEmb::Timestep(te) => {
            inputs.push(super::graph::value_info(
                "class_labels",
                INT64,
                std::slice::from_ref(&batch),
            ));
            let l = g.op(
                "Cast",
                "class_embedding",
                &["class_labels"],
                &[("to", Attr::Int(FLOAT as i64))],
            );
            let p = time_projection(&mut g, &l, &m.time_proj)?;
            Some(timestep_mlp(&mut g, "class_embedding", &p, te)?)
        }
        ClassEmb::Identity => {
            inputs.push(super::graph::value_info(
                "class_labels",
                FLOAT,
                &[batch.clone(), Dim::Fixed(c.time_embed_dim())],
            ));
            Some("class_labels".to_string())
        }
    };
    if let Some(cl) = class {
        emb = g.add("class_embedding", &emb, &cl);
    }
    let temb = g.silu("time_embedding", &emb); // every ResNet takes SiLU(emb)
    let cond = Cond {
        temb_silu: Some(&temb),
        context: None,
    };

    let mut h = g.conv("conv_in", &x, &m.conv_in, None)?;
    let mut skips = vec![h.clone()];
    for (i, d) in m.down_blocks.iter().enumerate() {
        let (o, states) = down_block(&mut g, &format!("down_blocks.{i}"), &h, d, cond)?;
        h = o;
        skips.extend(states);
    }
    if let Some(mid) = &m.mid_block {
        h = mid_block(&mut g, "mid_block", &h, mid, cond)?;
    }
    for (i, u) in m.up_blocks.iter().enumerate() {
        let k = u.num_states();
        let mine = skips.split_off(skips.len() - k);
        h = up_block(&mut g, &format!("up_blocks.{i}"), &h, &mine, u, cond, None)?;
    }
    h = g.group_norm("conv_norm_out", &h, &m.conv_norm_out, true)?;
    h = g.conv("conv_out", &h, &m.conv_out, None)?;
    if c.time_embedding_type == TimeEmbeddingType::Fourier {
        // score-SDE models divide the output by σ (the "timestep")
        let t = g.reshape("out_sample", "timestep", &[-1, 1, 1, 1]);
        h = g.op("Div", "out_sample", &[&h, &t], &[]);
    }
    let outputs = vec![image_value("out_sample", &batch, c.out_channels, ANY_HW)];
    let graph = g.finish("UNet2DModel", &h, "out_sample", inputs, outputs);
    Ok(super::model(
        graph,
        "unet",
        &serde_json::to_string(c).expect("serializable"),
        "diffusers UNet2DModel: out_sample = unet(sample, timestep[, class_labels]).sample. \
         timestep: float32 [batch] (fractional values allowed; the time embedding is computed \
         in the graph). class_labels: int64 [batch] (float32 [batch, time_embed_dim] for \
         class_embed_type \"identity\"). height and width: multiples of 2^(levels - 1).",
    ))
}

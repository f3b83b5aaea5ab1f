//! `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`) as an ONNX graph, op
//! for op as `crate::unet_2d_condition`'s forward: the UNet's blocks of `super::unet` with a
//! `Transformer2DModel` (`crate::transformer_2d`: GroupNorm → `proj_in` → self-attention,
//! cross-attention over `encoder_hidden_states`, GEGLU → `proj_out` → + input) after each
//! ResNet of the CrossAttn blocks.
//!
//! Inputs that are not a multiple of the overall downscale are handled as diffusers handles
//! them: every conv upsampler resizes (nearest, `F.interpolate(size=…)`) to the spatial size
//! of the skip states it meets next, read in the graph (`Shape` → `Resize` with `sizes`), so
//! one graph serves every height and width.

use super::graph::{image_value, value_info, Attr, Dim, Graph, ANY_HW};
use super::proto::{ModelProto, FLOAT};
use super::unet::{down_block, mid_block, time_projection, timestep_mlp, up_block, Cond};
use crate::transformer_2d::{BasicTransformerBlock, Projection, Transformer2D, LAYER_NORM_EPS};
use crate::unet_2d_condition::UNet2DConditionModel;
use crate::Result;

/// `[b, c, h, w]` → `[b, h·w, c]`.
fn to_seq(g: &mut Graph, scope: &str, x: &str, c: usize) -> String {
    let s = g.reshape(scope, x, &[0, c as i64, -1]); // [b, c, L]
    g.transpose(scope, &s, &[0, 2, 1])
}

/// `[b, h·w, c]` → `[b, c, h, w]`, `hw` the int64 [h, w] of the block's input.
fn to_map(g: &mut Graph, scope: &str, x: &str, c: usize, hw: &str) -> String {
    let t = g.transpose(scope, x, &[0, 2, 1]); // [b, c, L]
    let bc = g.const_i64(&[0, c as i64]); // 0: the batch copied from the input
    let shape = g.op("Concat", scope, &[&bc, hw], &[("axis", Attr::Int(0))]);
    g.op("Reshape", scope, &[&t, &shape], &[])
}

/// `proj_in` / `proj_out` as a 1×1 conv on the map, or a linear on the sequence.
fn projection_width(p: &Projection) -> Result<usize> {
    Ok(match p {
        Projection::Conv(c) => c.weight().dim(0)?,
        Projection::Linear(l) => l.weight().dim(0)?,
    })
}

/// `Transformer2DModel` over `x` [b, c, h, w] with the text states `ctx` [b, Lc, ctx_dim];
/// residual included.
pub(crate) fn transformer_2d(
    g: &mut Graph,
    name: &str,
    x: &str,
    t: &Transformer2D,
    ctx: &str,
) -> Result<String> {
    let c = t.norm.weight.dim(0)?;
    let inner = projection_width(&t.proj_in)?;
    let hw = g.shape_range(name, x, 2, None); // [h, w]
    let normed = g.group_norm(&format!("{name}.norm"), x, &t.norm, false)?;
    let proj_in = format!("{name}.proj_in");
    let mut h = match &t.proj_in {
        Projection::Conv(conv) => {
            let p = g.conv(&proj_in, &normed, conv, None)?;
            to_seq(g, name, &p, inner)
        }
        Projection::Linear(lin) => {
            let s = to_seq(g, name, &normed, c);
            g.linear(&proj_in, &s, lin, 3)?
        }
    }; // [b, L, inner]
    for (i, blk) in t.blocks.iter().enumerate() {
        h = basic_block(
            g,
            &format!("{name}.transformer_blocks.{i}"),
            &h,
            blk,
            inner,
            ctx,
        )?;
    }
    let proj_out = format!("{name}.proj_out");
    let out = match &t.proj_out {
        Projection::Conv(conv) => {
            let m = to_map(g, name, &h, inner, &hw);
            g.conv(&proj_out, &m, conv, None)?
        }
        Projection::Linear(lin) => {
            let o = g.linear(&proj_out, &h, lin, 3)?;
            to_map(g, name, &o, c, &hw)
        }
    };
    Ok(g.add(name, &out, x))
}

/// `BasicTransformerBlock` (layer_norm) over `x` [b, L, dim]: self-attention, cross-attention
/// over `ctx`, GEGLU feed-forward, each pre-normed with a residual.
fn basic_block(
    g: &mut Graph,
    name: &str,
    x: &str,
    blk: &BasicTransformerBlock,
    dim: usize,
    ctx: &str,
) -> Result<String> {
    let norm = |g: &mut Graph, n: &str, x: &str, ln: &crate::transformer_2d::LayerNorm| {
        g.layer_norm(
            &format!("{name}.{n}"),
            x,
            dim,
            LAYER_NORM_EPS,
            Some((&ln.weight, &ln.bias)),
        )
    };
    let n1 = norm(g, "norm1", x, &blk.norm1)?;
    let a = g.self_attention(&format!("{name}.attn1"), &n1, &blk.attn1)?;
    let h = g.add(name, &a, x);
    let n2 = norm(g, "norm2", &h, &blk.norm2)?;
    let a = g.cross_attention(&format!("{name}.attn2"), &n2, ctx, &blk.attn2)?;
    let h = g.add(name, &a, &h);
    let n3 = norm(g, "norm3", &h, &blk.norm3)?;
    let ff = format!("{name}.ff.net");
    let p = g.linear(&format!("{ff}.0.proj"), &n3, &blk.ff_in, 3)?; // [b, L, 2·inner]
    let parts = g.split(&ff, &p, 2, 2); // GEGLU: value, gate
    let gate = g.gelu_erf(&ff, &parts[1]);
    let gated = g.mul(&ff, &parts[0], &gate);
    let f = g.linear(&format!("{ff}.2"), &gated, &blk.ff_out, 3)?;
    Ok(g.add(name, &f, &h))
}

/// The graph of a `UNet2DConditionModel`: inputs `sample` [batch, in, height, width] f32,
/// `timestep` [batch] f32 and `encoder_hidden_states` [batch, sequence, cross_attention_dim]
/// f32 (the text encoder's last hidden state); output `out_sample` [batch, out, height, width].
pub(crate) fn export(m: &UNet2DConditionModel) -> Result<ModelProto> {
    let c = &m.config;
    let mut g = Graph::default();
    let batch = Dim::Named("batch");
    let inputs = vec![
        image_value("sample", &batch, c.in_channels, ANY_HW),
        value_info("timestep", FLOAT, std::slice::from_ref(&batch)),
        value_info(
            "encoder_hidden_states",
            FLOAT,
            &[
                batch.clone(),
                Dim::Named("sequence"),
                Dim::Fixed(c.context_dim()),
            ],
        ),
    ];
    let x = if c.center_input_sample {
        let x = g.mul_scalar("center_input_sample", "sample", 2.0);
        g.add_scalar("center_input_sample", &x, -1.0)
    } else {
        "sample".to_string()
    };
    let t_emb = time_projection(&mut g, "timestep", &m.time_proj)?;
    let emb = timestep_mlp(&mut g, "time_embedding", &t_emb, &m.time_embedding)?; // [b, temb]
    let temb = g.silu("time_embedding", &emb); // every ResNet takes SiLU(emb)
    let cond = Cond {
        temb_silu: Some(&temb),
        context: Some("encoder_hidden_states"),
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
        let name = format!("up_blocks.{i}");
        let k = u.num_states();
        let mine = skips.split_off(skips.len() - k);
        // The upsampler meets the next block's skips at their size (2× for multiples of the
        // downscale, one less where a down conv rounded an odd size up).
        let to = match (&u.up, skips.last()) {
            (Some(_), Some(s)) => Some(g.shape_range(&name, s, 2, None)),
            _ => None,
        };
        h = up_block(&mut g, &name, &h, &mine, u, cond, to.as_deref())?;
    }
    h = g.group_norm("conv_norm_out", &h, &m.conv_norm_out, true)?;
    h = g.conv("conv_out", &h, &m.conv_out, None)?;
    let outputs = vec![image_value("out_sample", &batch, c.out_channels, ANY_HW)];
    let graph = g.finish("UNet2DConditionModel", &h, "out_sample", inputs, outputs);
    Ok(super::model(
        graph,
        "unet",
        &serde_json::to_string(c).expect("serializable"),
        "diffusers UNet2DConditionModel: out_sample = unet(sample, timestep, \
         encoder_hidden_states).sample. timestep: float32 [batch] (the time embedding is \
         computed in the graph). encoder_hidden_states: the text encoder's last_hidden_state \
         [batch, sequence, cross_attention_dim] (for classifier-free guidance, stack the \
         unconditional and conditional rows into the batch). height and width: any size; \
         sizes that are not multiples of 2^(levels - 1) are resized up to the skip states as \
         diffusers does.",
    ))
}

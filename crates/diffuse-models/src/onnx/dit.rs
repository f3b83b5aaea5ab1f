//! `DiTTransformer2DModel` (diffusers `models/transformers/dit_transformer_2d.py`, DiT's
//! `models.py`) as an ONNX graph, op for op as `crate::dit`'s forward: patch embedding + the
//! fixed 2-D sin-cos positions, adaLN-Zero blocks, the final modulation, unpatchify.

use super::graph::{image_value, value_info, Attr, Dim, Graph};
use super::proto::{ModelProto, FLOAT, INT64};
use super::unet::{sinusoid, timestep_mlp};
use crate::dit::{DiTBlock, DiTTransformer2DModel, ADA_LN_EPS, TIME_PROJ_DIM};
use crate::Result;

/// `x · (1 + scale) + shift` with [b, 1, D] modulation.
fn modulate(g: &mut Graph, scope: &str, x: &str, shift: &str, scale: &str) -> String {
    let s1 = g.add_scalar(scope, scale, 1.0);
    let y = g.mul(scope, x, &s1);
    g.add(scope, &y, shift)
}

/// `CombinedTimestepLabelEmbeddings` of block `name`: [b, D].
fn conditioning(
    g: &mut Graph,
    name: &str,
    t_proj: &str,
    labels: &str,
    blk: &DiTBlock,
) -> Result<String> {
    let t = timestep_mlp(
        g,
        &format!("{name}.timestep_embedder"),
        t_proj,
        &blk.emb.timestep_embedder,
    )?;
    let table = format!("{name}.class_embedder.embedding_table");
    let w = g.weight(
        &format!("{table}.weight"),
        blk.emb.embedding_table.embeddings(),
    )?;
    let y = g.op("Gather", &table, &[&w, labels], &[("axis", Attr::Int(0))]);
    Ok(g.add(name, &t, &y))
}

/// One `BasicTransformerBlock` (ada_norm_zero): `x` [b, N, D], `cond` [b, D].
fn block(g: &mut Graph, name: &str, x: &str, cond: &str, blk: &DiTBlock) -> Result<String> {
    let d = blk.dim as i64;
    let ada = format!("{name}.norm1.linear");
    let c = g.silu(&ada, cond);
    let m = g.linear(&ada, &c, &blk.ada, 2)?; // [b, 6D]
    let m = g.reshape(&ada, &m, &[0, 6, d]);
    // shift/scale/gate of attention, then of the MLP: each [b, 1, D]
    let p = g.split(&ada, &m, 1, 6);
    let h = g.layer_norm(&format!("{name}.norm1.norm"), x, blk.dim, ADA_LN_EPS, None)?;
    let h = modulate(g, name, &h, &p[0], &p[1]);
    let a = g.self_attention(&format!("{name}.attn1"), &h, &blk.attn)?;
    let a = g.mul(name, &a, &p[2]);
    let x = g.add(name, &a, x);
    let affine = blk.norm3.as_ref().map(|(w, b)| (w, b));
    let h = g.layer_norm(&format!("{name}.norm3"), &x, blk.dim, blk.norm_eps, affine)?;
    let h = modulate(g, name, &h, &p[3], &p[4]);
    let ff = format!("{name}.ff.net");
    let h = g.linear(&format!("{ff}.0.proj"), &h, &blk.ff_in, 3)?;
    let h = if blk.exact_gelu {
        g.gelu_erf(&ff, &h)
    } else {
        g.gelu_tanh(&ff, &h)
    };
    let f = g.linear(&format!("{ff}.2"), &h, &blk.ff_out, 3)?;
    let f = g.mul(name, &f, &p[5]);
    Ok(g.add(name, &f, &x))
}

/// The graph of a `DiTTransformer2DModel`: inputs `sample` [batch, in, S, S] f32 (S =
/// `sample_size`: the position embedding is a constant for that grid), `timestep` [batch] f32
/// and, for a class-conditional model, `class_labels` [batch] int64 (0..=num_embeds_ada_norm,
/// the last being the null class); output `out_sample` [batch, out_channels, S, S], the
/// learned-variance half included.
pub(crate) fn export(m: &DiTTransformer2DModel) -> Result<ModelProto> {
    let c = &m.config;
    let mut g = Graph::default();
    let batch = Dim::Named("batch");
    let s = c.sample_size;
    let (d, p) = (c.inner_dim(), c.patch_size);
    let grid = s / p;
    let mut inputs = vec![
        image_value(
            "sample",
            &batch,
            c.in_channels,
            [Dim::Fixed(s), Dim::Fixed(s)],
        ),
        value_info("timestep", FLOAT, std::slice::from_ref(&batch)),
    ];
    let labels = if m.is_class_conditional() {
        inputs.push(value_info(
            "class_labels",
            INT64,
            std::slice::from_ref(&batch),
        ));
        "class_labels".to_string()
    } else {
        // the null class for every sample: one row, broadcast over the batch
        g.const_i64(&[m.null_class() as i64])
    };

    let tokens = g.conv("pos_embed.proj", "sample", &m.patch, None)?; // [b, D, gh, gw]
    let tokens = g.reshape("pos_embed", &tokens, &[0, d as i64, -1]);
    let tokens = g.transpose("pos_embed", &tokens, &[0, 2, 1]); // [b, N, D]
    let pos = g.weight("pos_embed.pos_embed", &m.pos_embed)?; // [1, N, D], a fixed buffer
    let mut x = g.add("pos_embed", &tokens, &pos);

    let t_proj = sinusoid(&mut g, "time_proj", "timestep", TIME_PROJ_DIM, true, 1.0);
    let mut first_cond = None;
    for (i, blk) in m.blocks.iter().enumerate() {
        let name = format!("transformer_blocks.{i}");
        let cond = conditioning(&mut g, &format!("{name}.norm1.emb"), &t_proj, &labels, blk)?;
        x = block(&mut g, &name, &x, &cond, blk)?;
        first_cond.get_or_insert(cond);
    }
    let cond = first_cond.ok_or_else(|| {
        crate::Error::Config("config key `num_layers`: must be at least 1".into())
    })?;
    let c1 = g.silu("proj_out_1", &cond);
    let mo = g.linear("proj_out_1", &c1, &m.proj_out_1, 2)?; // [b, 2D]
    let mo = g.reshape("proj_out_1", &mo, &[0, 2, d as i64]);
    let sh = g.split("proj_out_1", &mo, 1, 2); // shift, scale: [b, 1, D]
    let x = g.layer_norm("norm_out", &x, d, ADA_LN_EPS, None)?;
    let x = modulate(&mut g, "norm_out", &x, &sh[0], &sh[1]);
    let x = g.linear("proj_out_2", &x, &m.proj_out_2, 3)?; // [b, N, p·p·c_out]
    let co = c.out_channels() as i64;
    let (gi, pi) = (grid as i64, p as i64);
    // unpatchify: "nhwpqc -> nchpwq"
    let x = g.reshape("unpatchify", &x, &[0, gi, gi, pi, pi, co]);
    let x = g.transpose("unpatchify", &x, &[0, 5, 1, 3, 2, 4]);
    let x = g.reshape("unpatchify", &x, &[0, co, gi * pi, gi * pi]);
    let outputs = vec![image_value(
        "out_sample",
        &batch,
        c.out_channels(),
        [Dim::Fixed(s), Dim::Fixed(s)],
    )];
    let graph = g.finish("DiTTransformer2DModel", &x, "out_sample", inputs, outputs);
    Ok(super::model(
        graph,
        "transformer",
        &serde_json::to_string(c).expect("serializable"),
        "diffusers DiTTransformer2DModel: out_sample = transformer(sample, timestep[, \
         class_labels]).sample, all out_channels (with learn_sigma the second half is the \
         variance). timestep: float32 [batch]; class_labels: int64 [batch], \
         num_embeds_ada_norm is the null class. sample: sample_size × sample_size only.",
    ))
}

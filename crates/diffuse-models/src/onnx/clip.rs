//! transformers' `CLIPTextModel` (`models/clip/modeling_clip.py`, `CLIPTextTransformer`) as an
//! ONNX graph, op for op as `crate::text::clip`'s forward without an attention mask (as Stable
//! Diffusion's pipelines call it): token + position embeddings, the causal mask, pre-LN encoder
//! layers, the final LayerNorm and the eos pooling. Weights under transformers' names
//! (`text_model.…`).

use super::graph::{value_info, AttentionWeights, Attr, Dim, Graph};
use super::proto::{ModelProto, FLOAT, INT32, INT64};
use crate::text::clip::{EncoderLayer, HiddenAct, Norm};
use crate::text::ClipTextModel;
use crate::{Error, Result};
use candle_core::Tensor;

const PREFIX: &str = "text_model";

/// `CLIPEncoderLayer` over `x` [b, L, d] with the causal `mask` [L, L].
fn encoder_layer(
    g: &mut Graph,
    name: &str,
    x: &str,
    layer: &EncoderLayer,
    m: &ClipTextModel,
    mask: &str,
) -> Result<String> {
    let c = &m.config;
    let d = c.hidden_size;
    fn norm(n: &Norm) -> Option<(&Tensor, &Tensor)> {
        Some((&n.weight, &n.bias))
    }
    let h = g.layer_norm(
        &format!("{name}.layer_norm1"),
        x,
        d,
        c.layer_norm_eps,
        norm(&layer.layer_norm1),
    )?;
    let attn = format!("{name}.self_attn");
    let w = AttentionWeights {
        names: ["q_proj", "k_proj", "v_proj", "out_proj"].map(|p| format!("{attn}.{p}")),
        proj: [&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.out_proj],
        heads: c.num_attention_heads,
        head_dim: c.head_dim(),
    };
    let a = g.attention(&attn, &w, &h, &h, Some(mask))?;
    let x = g.add(name, &a, x);
    let h = g.layer_norm(
        &format!("{name}.layer_norm2"),
        &x,
        d,
        c.layer_norm_eps,
        norm(&layer.layer_norm2),
    )?;
    let mlp = format!("{name}.mlp");
    let h = g.linear(&format!("{mlp}.fc1"), &h, &layer.fc1, 3)?;
    let h = match c.hidden_act {
        HiddenAct::QuickGelu => g.quick_gelu(&mlp, &h),
        HiddenAct::Gelu => g.gelu_erf(&mlp, &h),
        other => unreachable!("checked in export: {other:?}"),
    };
    let h = g.linear(&format!("{mlp}.fc2"), &h, &layer.fc2, 3)?;
    Ok(g.add(name, &h, &x))
}

/// The graph of a `CLIPTextModel`: input `input_ids` int64 [batch, sequence] (sequence ≤
/// `max_position_embeddings`); outputs `last_hidden_state` [batch, sequence, hidden] and
/// `pooler_output` [batch, hidden] (the first eos token of each row, or its largest id for the
/// legacy `eos_token_id` 2).
pub(crate) fn export(m: &ClipTextModel) -> Result<ModelProto> {
    let c = &m.config;
    if !matches!(c.hidden_act, HiddenAct::QuickGelu | HiddenAct::Gelu) {
        return Err(Error::Input(format!(
            "ONNX export of a CLIPTextModel with hidden_act {}: only quick_gelu (SD 1.x) and \
             gelu (SD 2.x) are exported",
            serde_json::to_value(c.hidden_act).expect("serializable")
        )));
    }
    let d = c.hidden_size;
    let max = c.max_position_embeddings;
    let mut g = Graph::default();
    let (batch, seq) = (Dim::Named("batch"), Dim::Named("sequence"));
    let inputs = vec![value_info(
        "input_ids",
        INT64,
        &[batch.clone(), seq.clone()],
    )];
    let emb = format!("{PREFIX}.embeddings");
    let tok = g.weight(&format!("{emb}.token_embedding.weight"), &m.token_embedding)?;
    let tok = g.op(
        "Gather",
        &emb,
        &[&tok, "input_ids"],
        &[("axis", Attr::Int(0))],
    ); // [b, L, d]
    let len = g.shape_range(&emb, "input_ids", 1, Some(2)); // [L]
    let pos = g.weight(
        &format!("{emb}.position_embedding.weight"),
        &m.position_embedding,
    )?;
    let zero = g.const_i64(&[0]);
    let pos = g.op("Slice", &emb, &[&pos, &zero, &len, &zero], &[]); // [L, d]
    let mut h = g.add(&emb, &tok, &pos);

    // The causal mask: the lowest f32 above the diagonal, as transformers (and diffuse) add it
    // to the scores; a [max, max] constant cut to [L, L].
    let causal: Vec<f32> = (0..max)
        .flat_map(|i| (0..max).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    let causal = g.const_f32(&[max, max], &causal);
    let scope = format!("{PREFIX}.encoder");
    let ends = g.op("Concat", &scope, &[&len, &len], &[("axis", Attr::Int(0))]);
    let starts = g.const_i64(&[0, 0]);
    let axes = g.const_i64(&[0, 1]);
    let mask = g.op("Slice", &scope, &[&causal, &starts, &ends, &axes], &[]); // [L, L]

    for (i, layer) in m.layers.iter().enumerate() {
        h = encoder_layer(&mut g, &format!("{scope}.layers.{i}"), &h, layer, m, &mask)?;
    }
    let last = g.layer_norm(
        &format!("{PREFIX}.final_layer_norm"),
        &h,
        d,
        c.layer_norm_eps,
        Some((&m.final_layer_norm.weight, &m.final_layer_norm.bias)),
    )?;

    // Pooling: ArgMax takes the first of equal maxima, as torch's argmax.
    let pool = "pooler";
    let to_i32 = [("to", Attr::Int(INT32 as i64))];
    let key = if c.eos_token_id == 2 {
        // the legacy config: the largest id (the eos of OpenAI's vocabulary)
        g.op("Cast", pool, &["input_ids"], &to_i32)
    } else {
        // the first eos of the row (position 0 where there is none)
        let eos = g.const_i64(&[c.eos_token_id as i64]);
        let is_eos = g.op("Equal", pool, &["input_ids", &eos], &[]);
        g.op("Cast", pool, &[&is_eos], &to_i32)
    };
    let at = g.op(
        "ArgMax",
        pool,
        &[&key],
        &[("axis", Attr::Int(1)), ("keepdims", Attr::Int(1))],
    ); // [b, 1]
    let pooled = g.op(
        "GatherND",
        pool,
        &[&last, &at],
        &[("batch_dims", Attr::Int(1))],
    ); // [b, d]
    let outputs = vec![
        value_info(
            "last_hidden_state",
            FLOAT,
            &[batch.clone(), seq, Dim::Fixed(d)],
        ),
        value_info("pooler_output", FLOAT, &[batch, Dim::Fixed(d)]),
    ];
    let graph = g.finish_many(
        "CLIPTextModel",
        &[(&last, "last_hidden_state"), (&pooled, "pooler_output")],
        inputs,
        outputs,
    );
    Ok(super::model_with(
        graph,
        "text_encoder",
        (
            "transformers.config",
            &serde_json::to_string(c).expect("serializable"),
        ),
        &format!(
            "transformers CLIPTextModel: last_hidden_state, pooler_output = \
             text_encoder(input_ids) (no attention mask, as Stable Diffusion's pipelines call \
             it). input_ids: int64 [batch, sequence], sequence at most {max} \
             (max_position_embeddings; pad to the tokenizer's model_max_length as the pipelines \
             do). last_hidden_state is the UNet's encoder_hidden_states; pooler_output is taken \
             at {}.",
            if c.eos_token_id == 2 {
                "each row's largest id (the legacy eos_token_id 2)".to_string()
            } else {
                format!(
                    "each row's first eos_token_id {} (position 0 where there is none)",
                    c.eos_token_id
                )
            }
        ),
    ))
}

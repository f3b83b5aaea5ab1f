//! The decoder half of `AutoencoderKL` (diffusers `models/autoencoders/autoencoder_kl.py`
//! `decode`: `post_quant_conv`, then `Decoder` of `autoencoders/vae.py`) as an ONNX graph,
//! built from the UNet's ResNet, attention and block exporters as `crate::vae` is built from
//! the UNet's modules.

use super::graph::{image_value, Dim, Graph, ANY_HW};
use super::proto::ModelProto;
use super::unet::{mid_block, up_block, Cond};
use crate::{AutoencoderKL, Result};

/// The graph of `vae.decode(latent_sample).sample`: input `latent_sample` [batch, latent,
/// height, width] f32, *unscaled* latents (the caller divides by `scaling_factor` and adds
/// `shift_factor`, as diffusers' pipelines do before `vae.decode`); output `sample` [batch,
/// out, height·f, width·f].
pub(crate) fn export_decoder(vae: &AutoencoderKL) -> Result<ModelProto> {
    let c = &vae.config;
    let dec = &vae.decoder;
    let mut g = Graph::default();
    let batch = Dim::Named("batch");
    let inputs = vec![image_value(
        "latent_sample",
        &batch,
        c.latent_channels,
        ANY_HW,
    )];
    let z = match &vae.post_quant_conv {
        Some(p) => g.conv("post_quant_conv", "latent_sample", p, None)?,
        None => "latent_sample".to_string(),
    };
    let mut h = g.conv("decoder.conv_in", &z, &dec.conv_in, None)?;
    h = mid_block(
        &mut g,
        "decoder.mid_block",
        &h,
        &dec.mid_block,
        Cond::default(),
    )?;
    for (i, u) in dec.up_blocks.iter().enumerate() {
        let name = format!("decoder.up_blocks.{i}");
        h = up_block(&mut g, &name, &h, &[], u, Cond::default(), None)?;
    }
    h = g.group_norm("decoder.conv_norm_out", &h, &dec.conv_norm_out, true)?;
    h = g.conv("decoder.conv_out", &h, &dec.conv_out, None)?;
    let outputs = vec![image_value(
        "sample",
        &batch,
        c.out_channels,
        [Dim::Named("image_height"), Dim::Named("image_width")],
    )];
    let graph = g.finish("AutoencoderKLDecoder", &h, "sample", inputs, outputs);
    Ok(super::model(
        graph,
        "vae_decoder",
        &serde_json::to_string(c).expect("serializable"),
        "diffusers AutoencoderKL decoder: sample = vae.decode(latent_sample).sample. \
         latent_sample: unscaled latents (latents / scaling_factor + shift_factor); images \
         are in [-1, 1], image_height = height · 2^(levels - 1).",
    ))
}

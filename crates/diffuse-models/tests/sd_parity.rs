//! Stable Diffusion parity with diffusers 0.42.1 + transformers (fixtures of
//! `tools/fixtures/gen_sd.py`): `UNet2DConditionModel` forwards of three random-weight configs
//! (SD 1.x and 2.x layouts, two transformer layers per block at a non-square size).

use candle_core::Device;
use diffuse_models::net::Network;
use diffuse_models::weights;

mod common;
use common::{fixtures, load_st, max_abs_err, rel_err, timesteps};

#[test]
fn cross_attention_unets_match_diffusers() {
    for name in ["sd1", "sd2", "sd_layers2"] {
        let dir = fixtures().join("sd").join(format!("unet_{name}"));
        let (net, _) = weights::load::<Network>(&dir, &Device::Cpu).unwrap();
        assert!(matches!(net, Network::UNetCond(_)), "{name}");
        let io = load_st(&dir.join("io.safetensors"));
        let out = net
            .forward(
                &io["sample"],
                &timesteps(&io["timestep"]),
                Some(&io["encoder_hidden_states"]),
            )
            .unwrap();
        let (abs, rel) = (
            max_abs_err(&out, &io["output"]),
            rel_err(&out, &io["output"]),
        );
        eprintln!("unet_{name}: max abs error {abs:e}, relative {rel:e}");
        assert!(abs <= 1e-4, "unet_{name}: max abs error {abs:e}");
    }
    // 11×14: not a multiple of 4, so the up blocks resize to their skips (3×4 → 6×7 → 11×14).
    let dir = fixtures().join("sd/unet_sd_layers2");
    let (net, _) = weights::load::<Network>(&dir, &Device::Cpu).unwrap();
    let io = load_st(&dir.join("io_odd.safetensors"));
    let out = net
        .forward(
            &io["sample"],
            &timesteps(&io["timestep"]),
            Some(&io["encoder_hidden_states"]),
        )
        .unwrap();
    let abs = max_abs_err(&out, &io["output"]);
    eprintln!("unet_sd_layers2 at 11×14: max abs error {abs:e}");
    assert!(abs <= 1e-4, "odd size: max abs error {abs:e}");
}

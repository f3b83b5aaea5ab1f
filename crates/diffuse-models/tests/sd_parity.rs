//! Stable Diffusion parity with diffusers 0.42.1 + transformers (fixtures of
//! `tools/fixtures/gen_sd.py`): `UNet2DConditionModel` forwards of three random-weight configs
//! (SD 1.x and 2.x layouts, two transformer layers per block at a non-square size).

use candle_core::Device;
use diffuse_models::net::Network;
use diffuse_models::weights;

mod common;
use common::{fixtures, load_st, max_abs_err, rel_err, sd_pipeline, timesteps};

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

#[test]
fn a_stable_diffusion_pipeline_draws_what_diffusers_draws() {
    use diffuse_core::sampler::SamplerOptions;
    use diffuse_models::pipeline::{GenerateOptions, LoadOptions, Pipeline};
    let dir = sd_pipeline();
    let s = load_st(&fixtures().join("sd/pipeline_sd/samples.safetensors"));
    let pipe = Pipeline::load(dir.path(), &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(pipe.default_sampler, "ddim");
    assert_eq!(pipe.image_size(), Some((16, 16)));
    let prompts = ["a red apple".to_string(), "grinning face".to_string()];
    let negative = ["blurry".to_string(), String::new()];
    let embeds = pipe.prompt_embeds(&prompts, &negative, 2, 3.0, 0).unwrap();
    let e = max_abs_err(&embeds.cond, &s["prompt_embeds"]);
    let e_neg = max_abs_err(
        embeds.uncond.as_ref().unwrap(),
        &s["negative_prompt_embeds"],
    );
    eprintln!("prompt embeddings: max abs error {e:e} (negative {e_neg:e})");
    assert!(e <= 1e-4 && e_neg <= 1e-4);
    for (key, sampler, guidance) in [
        ("ddim", "ddim", 3.0),
        ("dpm", "dpmpp_2m", 3.0),
        ("ddim_nocfg", "ddim", 1.0),
    ] {
        let embeds = pipe
            .prompt_embeds(
                &prompts,
                if guidance == 1.0 { &[] } else { &negative },
                2,
                guidance,
                0,
            )
            .unwrap();
        let plan = pipe
            .sampler(Some(sampler), Some(4), SamplerOptions::default())
            .unwrap();
        let want_t: Vec<f32> = timesteps(&s[&format!("{key}_timesteps")]);
        let got_t: Vec<f32> = plan.timesteps().iter().map(|&t| t as f32).collect();
        assert_eq!(got_t, want_t, "{key} timesteps");
        let opts = GenerateOptions {
            num_images: 2,
            batch_size: 2,
            size: (8, 8),
            guidance_scale: guidance,
            prompt_embeds: Some(embeds),
            initial_noise: Some(s["latents_init"].clone()),
            ..Default::default()
        };
        let latents = pipe
            .generate_latents(&plan, &opts, &mut |_| std::ops::ControlFlow::Continue(()))
            .unwrap();
        let e = max_abs_err(&latents, &s[&format!("{key}_latents")]);
        let r = rel_err(&latents, &s[&format!("{key}_latents")]);
        eprintln!("{key}: 4-step latents max abs error {e:e} (relative {r:e})");
        assert!(r <= 1e-3, "{key}: relative error {r:e}");
        if let Some(images) = s.get(&format!("{key}_images")) {
            // diffusers' output_type="pt": (decoded / 2 + 0.5) clamped to [0, 1].
            let ours = ((pipe.decode(&latents, 0).unwrap() / 2.0).unwrap() + 0.5)
                .unwrap()
                .clamp(0f32, 1f32)
                .unwrap();
            let e = max_abs_err(&ours, images);
            eprintln!("{key}: decoded images max abs error {e:e}");
            assert!(e <= 1e-3, "{key}: images {e:e}");
        }
    }
}

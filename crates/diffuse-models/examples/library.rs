//! diffuse as a library, in one file: a diffusers scheduler config, the forward process
//! q(x_t | x₀) on an MNIST digit, a small class-conditional `UNet2DModel` built from a diffusers
//! config, and a DPM-Solver++ run with classifier-free guidance.
//!
//! `cargo run --release -p diffuse-models --example library` (a second or two on a CPU). The UNet
//! has random weights, so the samples are noise: load trained ones with
//! `diffuse_models::weights` or train them with `diffuse train`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use diffuse_core::config::SchedulerConfig;
use diffuse_core::denoiser::{ClassifierFreeGuidance, GuidanceInterval};
use diffuse_core::noising::add_noise;
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::{sample, Sampler};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_models::{UNet2DConfig, UNet2DModel};
use std::ops::ControlFlow;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;

    // A scheduler config as diffusers writes it; unknown keys are kept, bad values are errors.
    let ddpm = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
            "beta_schedule": "linear", "prediction_type": "epsilon"}"#,
    )?;
    let schedule = NoiseSchedule::from_config(&ddpm)?;

    // Forward process: one digit noised at four timesteps, one per batch row.
    let digit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/mnist-test-0.png");
    let x0 = diffuse_data::image_io::load_image(&digit, &device)?; // [1, 1, 28, 28] in [−1, 1]
    let timesteps = [0usize, 250, 500, 999];
    let x0 = x0.repeat((timesteps.len(), 1, 1, 1))?; // [4, 1, 28, 28]
    let eps = SeededNoise::new(0, timesteps.len()).randn(x0.shape(), DType::F32, &device)?;
    let x_t = add_noise(&schedule, &x0, &eps, &timesteps)?;
    for (i, &t) in timesteps.iter().enumerate() {
        // x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε: its distance from x₀ grows with t.
        let dist = (x_t.get(i)? - x0.get(i)?)?.abs()?.mean_all()?;
        println!(
            "t = {t:>3}: ᾱ_t = {:.5}, mean |x_t − x₀| = {:.3}",
            schedule.alphas_cumprod[t],
            dist.to_scalar::<f32>()?
        );
    }

    // A small class-conditional UNet2DModel from diffusers' config keys (10 digits + the null
    // class for guidance); weights under diffusers' names, here freshly initialised.
    let unet_config = UNet2DConfig::from_json_str(
        r#"{"sample_size": 28, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": 8, "num_class_embeds": 11}"#,
    )?;
    let varmap = VarMap::new();
    let unet = UNet2DModel::new(
        &unet_config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;

    // Sampling: the same schedule with another diffusers class; the sampler is shareable,
    // its per-run state is created inside `sample`.
    let dpm = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000,
            "beta_schedule": "linear", "prediction_type": "epsilon"}"#,
    )?;
    let sampler = Sampler::new(&dpm, 10)?;
    let classes = [3u32, 1, 4, 1];
    let mut noise = SeededNoise::new(42, classes.len()); // image i: stream (42, i)
    let x_big_t = noise.randn(&(classes.len(), 1, 28, 28).into(), DType::F32, &device)?;
    let guided = ClassifierFreeGuidance {
        model: &unet,
        labels: classes.to_vec(),
        null_label: 10,
        scales: vec![2.0; classes.len()],
        // Guide only at noise levels σ in [0.3, 5] (None: every step).
        guided: Some(sampler.guided_timesteps(&GuidanceInterval::new(0.3, 5.0)?)?),
    };
    let images: Tensor = sample(&sampler, &guided, &x_big_t, &mut noise, &mut |step| {
        println!(
            "step {}/{} at t = {}",
            step.index + 1,
            step.total,
            step.timestep
        );
        ControlFlow::Continue(())
    })?; // [4, 1, 28, 28]
    println!(
        "sampled {:?}, values in [{:.2}, {:.2}]",
        images.dims(),
        images.min_all()?.to_scalar::<f32>()?,
        images.max_all()?.to_scalar::<f32>()?
    );
    Ok(())
}

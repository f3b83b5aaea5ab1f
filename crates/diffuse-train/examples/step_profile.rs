//! Times the issue-#8 U-Net (1×32×32, channels 64/128/128, attention at 8×8): forward at
//! batch 32 and one train step (forward, MSE, backward, AdamW), for profiling with `perf`.
//! `cargo run --release -p diffuse-train --example step_profile [-- steps]`

use candle_core::{Device, Tensor};
use diffuse_models::config::UNet2DConfig;
use diffuse_models::weights;
use diffuse_train::optim::{AdamW, AdamWConfig};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(5);
    let cfg = UNet2DConfig::from_json_str(
        r#"{"_class_name":"UNet2DModel","sample_size":32,"in_channels":1,"out_channels":1,
        "block_out_channels":[64,128,128],"layers_per_block":2,"norm_num_groups":32,
        "down_block_types":["DownBlock2D","DownBlock2D","AttnDownBlock2D"],
        "up_block_types":["AttnUpBlock2D","UpBlock2D","UpBlock2D"]}"#,
    )?;
    let dev = Device::Cpu;
    let (model, varmap) = weights::build_unet(&cfg, &dev)?;
    weights::seeded_init(&varmap, 0)?;
    let x = Tensor::randn(0f32, 1.0, (32, 1, 32, 32), &dev)?;
    let target = Tensor::randn(0f32, 1.0, (32, 1, 32, 32), &dev)?;
    let t: Vec<f32> = (0..32).map(|i| (i * 31 % 1000) as f32).collect();
    let infer = weights::inference_model(&cfg, &varmap, &dev)?;
    for i in 0..steps {
        let s = Instant::now();
        infer.forward(&x, &t, None)?;
        println!("forward b32 {i}: {:.1} ms", s.elapsed().as_secs_f64() * 1e3);
    }
    let vars: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut opt = AdamW::new(vars, AdamWConfig::default())?;
    for i in 0..steps {
        let s = Instant::now();
        let y = model.forward(&x, &t, None)?;
        let loss = (y - &target)?.sqr()?.mean_all()?;
        let f = s.elapsed().as_secs_f64() * 1e3;
        let grads = loss.backward()?;
        let b = s.elapsed().as_secs_f64() * 1e3;
        opt.update(&grads, 1e-4)?;
        println!(
            "train step {i}: {:.1} ms (forward {f:.1}, backward {:.1}, adamw {:.1})",
            s.elapsed().as_secs_f64() * 1e3,
            b - f,
            s.elapsed().as_secs_f64() * 1e3 - b
        );
    }
    Ok(())
}

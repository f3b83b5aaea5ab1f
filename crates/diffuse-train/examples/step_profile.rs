//! Times the issue-#8 U-Net (1×32×32, channels 64/128/128, attention at 8×8): forward at
//! batch 32 and one train step (forward, MSE, backward, AdamW), for profiling with `perf`.
//! `cargo run --release -p diffuse-train --example step_profile [-- steps]`

use candle_core::{Device, Tensor};
use diffuse_models::config::UNet2DConfig;
use diffuse_models::weights;
use diffuse_train::optim::{AdamW, AdamWConfig};
use std::time::Instant;

/// Process CPU seconds (all threads): on a busy machine, a steadier figure than wall time.
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    diffuse_models::kernels::tune_allocator();
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
        let (s, c0) = (Instant::now(), cpu_s());
        infer.forward(&x, &t, None)?;
        println!(
            "forward b32 {i}: cpu {:.1} ms; wall {:.1} ms",
            (cpu_s() - c0) * 1e3,
            s.elapsed().as_secs_f64() * 1e3
        );
    }
    if std::env::var("FWD_ONLY").is_ok() {
        return Ok(());
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
        let (s, c0) = (Instant::now(), cpu_s());
        let y = model.forward(&x, &t, None)?;
        let loss = (y - &target)?.sqr()?.mean_all()?;
        let f = s.elapsed().as_secs_f64() * 1e3;
        let grads = loss.backward()?;
        let b = s.elapsed().as_secs_f64() * 1e3;
        opt.update(&grads, 1e-4)?;
        println!(
            "train step {i}: cpu {:.1} ms; wall {:.1} ms (forward {f:.1}, backward {:.1}, adamw {:.1})",
            (cpu_s() - c0) * 1e3,
            s.elapsed().as_secs_f64() * 1e3,
            b - f,
            s.elapsed().as_secs_f64() * 1e3 - b
        );
    }
    Ok(())
}

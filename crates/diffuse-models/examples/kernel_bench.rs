//! Per-op timings of our CPU kernels against candle's plain ops (medians, ms):
//! `cargo run --release -p diffuse-models --example kernel_bench [-- runs]`.
//! `bench/kernels_torch.py` measures the same ops in PyTorch.

use candle_core::{Device, Tensor, Var};
use diffuse_models::kernels::{conv2d, group_norm};
use std::time::Instant;

/// Process CPU time in seconds (with `CPU_TIME=1`: robust to a busy machine at 1 thread).
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let cpu = std::env::var("CPU_TIME").is_ok();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let (s, c) = (Instant::now(), cpu_s());
            f();
            if cpu {
                (cpu_s() - c) * 1e3
            } else {
                s.elapsed().as_secs_f64() * 1e3
            }
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn main() -> candle_core::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(10);
    let dev = Device::Cpu;
    println!("| op | shape | candle ms | diffuse ms | speedup |");
    println!("|---|---|---|---|---|");
    for &(b, c, hw) in &[(32usize, 64usize, 32usize), (32, 128, 16), (8, 128, 8)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, hw, hw), &dev)?)?;
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (c, c, 3, 3), &dev)? * 0.05)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, c, &dev)?)?;
        let shape = format!("{b}×{c}×{hw}×{hw}, 3×3");
        let plain = || {
            x.conv2d(&w, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
                .unwrap()
        };
        let ours = || conv2d::conv2d(&x, &w, Some(&bias), 1, 1).unwrap();
        let (xd, wd, bd) = (
            x.as_detached_tensor(),
            w.as_detached_tensor(),
            bias.as_detached_tensor(),
        );
        let tc = median_ms(runs, || {
            xd.conv2d(&wd, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bd.reshape((1, c, 1, 1)).unwrap())
                .unwrap();
        });
        let to = median_ms(runs, || {
            conv2d::conv2d(&xd, &wd, Some(&bd), 1, 1).unwrap();
        });
        println!(
            "| conv fwd | {shape} | {tc:.1} | {to:.1} | {:.2} |",
            tc / to
        );
        {
            let g = conv2d::Geometry::new(xd.dims(), wd.dims(), 1, 1)?;
            let xs = xd.flatten_all()?.to_vec1::<f32>()?;
            let ws = wd.flatten_all()?.to_vec1::<f32>()?;
            let bs = bd.to_vec1::<f32>()?;
            let ys = conv2d::forward(&xs, &ws, &bs, &g);
            let f = median_ms(runs, || {
                conv2d::forward(&xs, &ws, &bs, &g);
            });
            let bw = median_ms(runs, || {
                conv2d::backward(&xs, &ws, &ys, &g);
            });
            println!("| conv kernel alone fwd / bwd | {shape} | | {f:.1} / {bw:.1} | |");
        }
        let yc = plain();
        let yo = ours();
        let tc = median_ms(runs, || {
            yc.sum_all().unwrap().backward().unwrap();
        });
        let to = median_ms(runs, || {
            yo.sum_all().unwrap().backward().unwrap();
        });
        println!(
            "| conv bwd (x, w, b) | {shape} | {tc:.1} | {to:.1} | {:.2} |",
            tc / to
        );
        let g = Var::from_tensor(&Tensor::ones(c, candle_core::DType::F32, &dev)?)?;
        let be = Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, &dev)?)?;
        let gn =
            candle_nn::GroupNorm::new(g.as_tensor().clone(), be.as_tensor().clone(), c, 32, 1e-5)?;
        let shape = format!("{b}×{c}×{hw}×{hw}, 32 groups");
        let tc = median_ms(runs, || {
            candle_nn::Module::forward(&gn, &xd)
                .unwrap()
                .silu()
                .unwrap();
        });
        let to = median_ms(runs, || {
            group_norm::group_norm(&xd, &g, &be, 32, 1e-5, true).unwrap();
        });
        println!(
            "| GN+SiLU fwd | {shape} | {tc:.1} | {to:.1} | {:.2} |",
            tc / to
        );
        let yc = candle_nn::Module::forward(&gn, &x)?.silu()?;
        let yo = group_norm::group_norm(&x, &g, &be, 32, 1e-5, true)?;
        let tc = median_ms(runs, || {
            yc.sum_all().unwrap().backward().unwrap();
        });
        let to = median_ms(runs, || {
            yo.sum_all().unwrap().backward().unwrap();
        });
        println!(
            "| GN+SiLU bwd | {shape} | {tc:.1} | {to:.1} | {:.2} |",
            tc / to
        );
        let xs = xd.flatten_all()?.to_vec1::<f32>()?;
        let gs = vec![1f32; c];
        let bs = vec![0f32; c];
        let raw = median_ms(runs, || {
            group_norm::backward(None, &xs, &gs, &bs, &xs, &[b, c, hw, hw], 32, 1e-5, true)
                .unwrap();
        });
        let rawf = median_ms(runs, || {
            group_norm::forward(&xs, &gs, &bs, &[b, c, hw, hw], 32, 1e-5, true).unwrap();
        });
        println!("| GN+SiLU kernel alone fwd / bwd | {shape} | | {rawf:.1} / {raw:.1} | |");
    }
    Ok(())
}

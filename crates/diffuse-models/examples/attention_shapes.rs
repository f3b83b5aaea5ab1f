//! `ops::attention` on the models' head shapes, forward and forward+backward, wall-clock
//! medians in ms at candle's thread count (arguments: runs, and a substring of the shapes to
//! run). Run it twice to compare the fused kernel with candle's composed ops:
//! `cargo run --release -p diffuse-models --example attention_shapes` and the same with
//! `DIFFUSE_KERNELS=candle`.

use candle_core::{Device, Tensor, Var};
use diffuse_models::ops;
#[path = "common/mod.rs"]
mod common;
use common::median_ms;

fn main() -> candle_core::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(7);
    let only = std::env::args().nth(2).unwrap_or_default(); // a substring of `what`
    let dev = Device::Cpu;
    println!("| what | b, heads, L, Lk, d | forward ms | forward+backward ms |");
    println!("|---|---|---:|---:|");
    for (what, b, h, l, lk, d) in [
        (
            "U-Net 8×8, batch 1",
            1usize,
            16usize,
            64usize,
            64usize,
            8usize,
        ),
        ("U-Net 8×8, batch 16", 16, 16, 64, 64, 8),
        ("U-Net 8×8, batch 32", 32, 16, 64, 64, 8),
        ("U-Net 16×16, batch 8", 8, 16, 256, 256, 8),
        ("text U-Net cross, batch 8", 8, 8, 256, 77, 40),
        ("DiT-S 256 tokens, batch 8", 8, 6, 256, 256, 64),
        ("VAE mid 16×16, batch 4", 4, 1, 256, 256, 128),
        ("VAE mid 32×32, batch 1", 1, 1, 1024, 1024, 512),
    ] {
        if !what.contains(&only) {
            continue;
        }
        // [b, L, h, d] viewed as [b, h, L, d], as the models' head split makes it.
        let t = |n: usize| -> candle_core::Result<Var> {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, n, h, d), &dev)?.transpose(1, 2)?)
        };
        let (q, k, v) = (t(l)?, t(lk)?, t(lk)?);
        let scale = 1.0 / (d as f64).sqrt();
        let fwd = median_ms(runs, || {
            ops::attention(&q, &k, &v, scale).unwrap();
        });
        let both = median_ms(runs, || {
            let o = ops::attention(&q, &k, &v, scale).unwrap();
            o.sum_all().unwrap().backward().unwrap();
        });
        println!("| {what} | {b}, {h}, {l}, {lk}, {d} | {fwd:.2} | {both:.2} |");
    }
    Ok(())
}

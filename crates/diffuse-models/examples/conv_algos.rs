//! Each convolution algorithm on the 3×3 layer shapes of the bench and recipe U-Nets, per
//! pass (forward, dX, dW), wall-clock medians in ms at the thread count candle uses:
//! `cargo run --release -p diffuse-models --example conv_algos [-- runs [batch]]`.

use diffuse_models::kernels::conv2d::{backward, forward, Geometry};
use diffuse_models::kernels::tune::{pinned, Algo};
use diffuse_models::kernels::winograd::{self, Variant};
#[path = "common/mod.rs"]
mod common;
use common::median_ms;

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(7);
    let algos = [
        ("im2col", Algo::Im2col),
        ("F2", Algo::Winograd(Variant::F2)),
        ("F4", Algo::Winograd(Variant::F4)),
    ];
    println!("| b | ci→co | hw | pass | im2col | F(2×2) | F(4×4) |");
    println!("|---|---|---|---|---:|---:|---:|");
    // An optional second argument times one batch size only.
    let batches: Vec<usize> = match std::env::args().nth(2) {
        Some(b) => vec![b.parse().unwrap()],
        None => vec![1, 8, 32],
    };
    for b in batches {
        for &(ci, co, hw) in &[
            (64usize, 64usize, 32usize),
            (128, 128, 16),
            (128, 128, 8),
            (256, 128, 8),
            (32, 32, 32),
            (64, 64, 16),
            (64, 64, 8),
            (64, 64, 4),
        ] {
            let g = Geometry::new(&[b, ci, hw, hw], &[co, ci, 3, 3], 1, 1).unwrap();
            let x: Vec<f32> = (0..b * ci * hw * hw)
                .map(|i| (i % 7) as f32 * 0.1)
                .collect();
            let w: Vec<f32> = (0..co * ci * 9).map(|i| (i % 5) as f32 * 0.01).collect();
            let bias = vec![0.1f32; co];
            let dy: Vec<f32> = (0..b * co * hw * hw)
                .map(|i| (i % 3) as f32 * 0.1)
                .collect();
            let mut packed = Vec::new();
            for (_, a) in algos {
                packed.push(match a {
                    Algo::Im2col => {
                        pinned(a, || median_ms(runs, || drop(forward(&x, &w, &bias, &g))))
                    }
                    Algo::Winograd(v) => {
                        let u = winograd::prepare_weights(v, &w, co, ci);
                        let t = candle_core::utils::get_num_threads();
                        median_ms(runs, || {
                            drop(winograd::conv3x3(
                                v,
                                &x,
                                &u,
                                Some(&bias),
                                b,
                                ci,
                                co,
                                hw,
                                hw,
                                t,
                            ))
                        })
                    }
                });
            }
            let mut fwd = Vec::new();
            let mut bwd = Vec::new();
            for (_, a) in algos {
                fwd.push(pinned(a, || {
                    median_ms(runs, || drop(forward(&x, &w, &bias, &g)))
                }));
                bwd.push(pinned(a, || {
                    median_ms(runs, || drop(backward(&x, &w, &dy, &g)))
                }));
            }
            let t = candle_core::utils::get_num_threads();
            let mut dx = vec![pinned(Algo::Im2col, || {
                median_ms(runs, || drop(backward(&x, &w, &dy, &g)))
            })];
            let mut dwt = vec![f64::NAN];
            for v in [Variant::F2, Variant::F4] {
                dx.push(median_ms(runs, || {
                    let f = winograd::flip_weights(&w, co, ci);
                    let u = winograd::prepare_weights(v, &f, ci, co);
                    drop(winograd::conv3x3(v, &dy, &u, None, b, co, ci, hw, hw, t))
                }));
                dwt.push(median_ms(runs, || {
                    drop(winograd::grad_weight(v, &x, &dy, b, ci, co, hw, hw, t))
                }));
            }
            let row = |pass: &str, t: &[f64]| {
                println!(
                    "| {b} | {ci}→{co} | {hw} | {pass} | {:.2} | {:.2} | {:.2} |",
                    t[0], t[1], t[2]
                )
            };
            row("fwd", &fwd);
            row("fwd, weights packed", &packed);
            row("bwd (dX+dW)", &bwd);
            row("dX alone (im2col: dX+dW)", &dx);
            row("dW alone", &dwt);
        }
    }
}

//! Scratch: one Winograd layer in a loop, for perf.
use diffuse_models::kernels::winograd::{self, Variant};
fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (b, ci, co, hw, iters, pass) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    let x: Vec<f32> = (0..b * ci * hw * hw)
        .map(|i| (i % 7) as f32 * 0.1)
        .collect();
    let dy: Vec<f32> = (0..b * co * hw * hw)
        .map(|i| (i % 3) as f32 * 0.1)
        .collect();
    let w: Vec<f32> = (0..co * ci * 9).map(|i| (i % 5) as f32 * 0.01).collect();
    let u = winograd::prepare_weights(Variant::F4, &w, co, ci);
    let t = candle_core::utils::get_num_threads();
    let s = std::time::Instant::now();
    for _ in 0..iters {
        if pass == 0 {
            drop(winograd::conv3x3(
                Variant::F4,
                &x,
                &u,
                None,
                b,
                ci,
                co,
                hw,
                hw,
                t,
            ));
        } else {
            drop(winograd::grad_weight(
                Variant::F4,
                &x,
                &dy,
                b,
                ci,
                co,
                hw,
                hw,
                t,
            ));
        }
    }
    println!("{:.3} ms", s.elapsed().as_secs_f64() * 1e3 / iters as f64);
}

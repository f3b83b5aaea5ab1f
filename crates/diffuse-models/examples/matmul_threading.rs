//! The `gemm` crate on the U-Net's linear-layer shapes: one thread against its own 2-thread
//! split, with the right operand row-major (`x · B`) and column-major (`x · Wᵀ`, what candle's
//! `Linear` passes), median µs. Why `kernels::linear` picks the layout and the threading itself:
//! `RAYON_NUM_THREADS=2 cargo run --release -p diffuse-models --example matmul_threading`.

use gemm::Parallelism;
use std::time::Instant;

fn main() {
    println!(
        "| m × k · k × n | 1 thread | gemm's 2 threads | Wᵀ, 1 thread | Wᵀ, gemm's 2 threads |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (m, k, n) in [
        (1usize, 512usize, 128usize),
        (16, 512, 128),
        (64, 128, 128),
        (256, 128, 128),
        (1024, 128, 128),
        (128, 1024, 128),
    ] {
        let (a, b) = (vec![1.0f32; m * k], vec![1.0f32; k * n]);
        let mut c = vec![0f32; m * n];
        let mut time = |par: Parallelism, transposed: bool| {
            let (rcs, rrs) = if transposed { (k, 1) } else { (1, n) };
            let mut run = || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    rcs as isize,
                    rrs as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            };
            let iters = (100_000_000 / (m * n * k)).clamp(20, 2000);
            let mut t: Vec<f64> = (0..9)
                .map(|_| {
                    let s = Instant::now();
                    (0..iters).for_each(|_| run());
                    s.elapsed().as_secs_f64() / iters as f64 * 1e6
                })
                .collect();
            t.sort_by(|x, y| x.partial_cmp(y).unwrap());
            t[4]
        };
        let two = Parallelism::Rayon(2);
        let row = [
            time(Parallelism::None, false),
            time(two, false),
            time(Parallelism::None, true),
            time(two, true),
        ];
        println!(
            "| {m} × {k} · {k} × {n} | {:.1} | {:.1} | {:.1} | {:.1} |",
            row[0], row[1], row[2], row[3]
        );
    }
}

//! Data-parallel training (torch DDP semantics) with ranks as threads: 2 ranks × B/2 rows end
//! where 1 rank × B rows ends (up to float summation order), rank 0 alone writes, a stop on
//! one rank stops all at the same step, and a 2-rank run resumes exactly.

use candle_core::{DType, Device, Tensor};
use diffuse_train::dist::threads::ThreadGroup;
use diffuse_train::trainer::{train, train_with, TrainConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

fn config(extra: &[&str]) -> TrainConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiny.toml"
    ))
    .unwrap();
    let mut c = TrainConfig::from_toml(&text).unwrap();
    for s in [
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=5",
        "data.batch_size=8",
        "train.learning_rate=1e-3",
    ]
    .iter()
    .chain(extra)
    {
        c.set(s).unwrap();
    }
    c
}

/// Trains `cfg` as `world` thread ranks into `outs[rank]`; `stop_at` makes rank 0 ask to stop
/// after that step.
fn run_ranks(cfg: &TrainConfig, outs: &[PathBuf], resume: bool, stop_at: Option<u64>) -> Vec<u64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadGroup::new(outs.len())
            .into_iter()
            .zip(outs)
            .map(|(g, out)| {
                s.spawn(move || {
                    let stop = AtomicBool::new(false);
                    let rank = diffuse_train::dist::Collective::rank(&g);
                    train_with(
                        cfg,
                        out,
                        resume,
                        &Device::Cpu,
                        &stop,
                        &mut |r| {
                            if rank == 0 && Some(r.step) == stop_at {
                                stop.store(true, Ordering::SeqCst);
                            }
                        },
                        &g,
                    )
                    .unwrap()
                    .steps
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// max |a − b| / max |a| over all tensors of two weight files.
fn rel_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    let (mut d, mut m) = (0f32, 0f32);
    for (k, x) in &a {
        let y = &b[k];
        assert_eq!(y.dtype(), DType::F32);
        d = d.max(
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap(),
        );
        m = m.max(x.abs().unwrap().max_all().unwrap().to_scalar().unwrap());
    }
    d / m
}

const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
const EMA: &str = "unet_ema/diffusion_pytorch_model.safetensors";

fn one_vs_two_ranks(extra: &[&str], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (one, two, two_r1) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("two-rank1"),
    );
    let cfg = config(extra);
    let never = AtomicBool::new(false);
    assert_eq!(
        train(&cfg, &one, false, &Device::Cpu, &never, &mut |_| {})
            .unwrap()
            .steps,
        4
    );
    assert_eq!(
        run_ranks(&cfg, &[two.clone(), two_r1.clone()], false, None),
        vec![4, 4]
    );
    assert!(!two_r1.exists(), "rank 1 must not write");
    for f in [UNET, EMA] {
        let e = rel_diff(&one.join(f), &two.join(f));
        eprintln!("{what}: 1 rank × 8 vs 2 ranks × 4, {f}: max-abs rel diff {e:.3e}");
        assert!(e < 1e-5, "{what} {f}: {e}");
    }
}

#[test]
fn two_ranks_equal_one_rank_epsilon_min_snr_cfg_dropout() {
    // tiny.toml: class-conditional UNet with attention, ε, Min-SNR-γ, label dropout.
    one_vs_two_ranks(&[], "ε/min-SNR");
}

#[test]
fn two_ranks_equal_one_rank_flow_with_accumulation() {
    one_vs_two_ranks(
        &[
            r#"train.prediction_type="flow""#,
            "train.gradient_accumulation_steps=2",
            "data.batch_size=4",
        ],
        "flow, 2 micro-batches",
    );
}

#[test]
fn two_rank_run_stops_together_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg = config(&[]);
    run_ranks(&cfg, &[a.clone(), a.clone()], false, None);
    // Rank 0 alone is asked to stop after step 3: both ranks stop there (checkpoint step-3).
    assert_eq!(
        run_ranks(&cfg, &[b.clone(), b.clone()], false, Some(3)),
        vec![3, 3]
    );
    assert!(b.join("checkpoints/step-3/training_state.json").exists());
    assert_eq!(
        run_ranks(&cfg, &[b.clone(), b.clone()], true, None),
        vec![4, 4]
    );
    for f in [UNET, EMA] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs after a 2-rank resume"
        );
    }
    // A 2-rank checkpoint resumes in one process, and vice versa (the data order is global).
    let c = dir.path().join("c");
    run_ranks(&cfg, &[c.clone(), c.clone()], false, Some(2));
    let never = AtomicBool::new(false);
    assert_eq!(
        train(&cfg, &c, true, &Device::Cpu, &never, &mut |_| {})
            .unwrap()
            .steps,
        4
    );
    let e = rel_diff(&a.join(UNET), &c.join(UNET));
    eprintln!("2 ranks to step 2, then 1 rank to 4 vs 2 ranks to 4: {e:.3e}");
    assert!(e < 1e-5, "{e}");
}

#[test]
fn uneven_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let cfg = config(&["data.batch_size=7"]);
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|g| {
                let (cfg, out) = (&cfg, &out);
                s.spawn(move || {
                    let never = AtomicBool::new(false);
                    train_with(cfg, out, false, &Device::Cpu, &never, &mut |_| {}, &g)
                        .err()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        errs[0].contains("batch_size = 7") && errs[0].contains("multiple of 2"),
        "{}",
        errs[0]
    );
}

#[test]
fn a_group_of_one_runs_the_collectives_and_equals_plain_training() {
    // What `--gpus 1` does (NCCL there, threads here): identical bits.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let cfg = config(&["train.max_steps=2"]);
    let never = AtomicBool::new(false);
    train(&cfg, &a, false, &Device::Cpu, &never, &mut |_| {}).unwrap();
    assert_eq!(
        run_ranks(&cfg, std::slice::from_ref(&b), false, None),
        vec![2]
    );
    for f in [UNET, EMA] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

//! Readers never see half-written state (issue 21, item 2): while runs write into a folder
//! (a checkpoint every step, the pipeline rewritten at the end of each run), a reader that
//! loads the pipeline in a loop, as `sample`, `serve` and `eval` do, always gets a complete
//! one: every load succeeds, and the EMA weights it reads are, byte for byte, those of one of
//! the run's checkpoints.

use candle_core::Device;
use diffuse_models::pipeline::{LoadOptions, Pipeline};
use diffuse_train::trainer::{train, TrainConfig};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

const EMA: &str = "unet_ema/diffusion_pytorch_model.safetensors";

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[test]
fn a_reader_sees_only_complete_pipelines_while_runs_write() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiny.toml"
    ))
    .unwrap();
    let mut cfg = TrainConfig::from_toml(&text).unwrap();
    for s in [
        "train.max_steps=2",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=100",
        "data.batch_size=8",
    ] {
        cfg.set(s).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let never = AtomicBool::new(false);
    train(&cfg, &out, false, &Device::Cpu, &never, &mut |_| {}).unwrap();

    let done = AtomicBool::new(false);
    let (loads, seen) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut loads = 0usize;
            let mut seen = HashSet::new();
            while !done.load(Ordering::SeqCst) {
                if let Err(e) = Pipeline::load(&out, &LoadOptions::default(), &Device::Cpu) {
                    panic!("load {loads} failed while a run writes: {e}");
                }
                seen.insert(hash(&std::fs::read(out.join(EMA)).unwrap()));
                loads += 1;
            }
            (loads, seen)
        });
        // Four resumed runs, each ending with the pipeline rewritten.
        for steps in [4, 6, 8, 10] {
            cfg.train.max_steps = steps;
            train(&cfg, &out, true, &Device::Cpu, &never, &mut |_| {}).unwrap();
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    let complete: HashSet<u64> = (1..=10)
        .map(|k| hash(&std::fs::read(out.join(format!("checkpoints/step-{k}")).join(EMA)).unwrap()))
        .collect();
    assert!(loads >= 4, "only {loads} loads");
    assert!(
        seen.is_subset(&complete),
        "a load read EMA weights of no checkpoint"
    );
    eprintln!(
        "{loads} loads while 4 runs wrote; {} distinct complete pipelines seen",
        seen.len()
    );
}

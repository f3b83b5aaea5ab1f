//! `[scheduler]` against `train.prediction_type`: the pairs that cannot train are refused in
//! one line that says what to set, before any step runs.

use candle_core::Device;
use diffuse_train::trainer::{train, TrainConfig};
use std::sync::atomic::AtomicBool;

fn refusal(sets: &[&str]) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiny.toml"
    ))
    .unwrap();
    let mut c = TrainConfig::from_toml(&text).unwrap();
    c.set("train.max_steps=1").unwrap();
    c.scheduler.clear();
    for s in sets {
        c.set(s).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let e = train(&c, dir.path(), false, &Device::Cpu, &never, &mut |_| {})
        .err()
        .expect("refused")
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(!dir.path().join("checkpoints").exists(), "{e}");
    e
}

#[test]
fn mismatched_schedulers_are_refused_in_one_line() {
    let e = refusal(&[
        r#"train.prediction_type="edm""#,
        r#"scheduler._class_name="DDPMScheduler""#,
    ]);
    assert!(e.contains("needs an EDM scheduler"), "{e}");
    let e = refusal(&[r#"scheduler._class_name="EDMEulerScheduler""#]);
    assert!(e.contains(r#"set prediction_type = "edm""#), "{e}");
    let e = refusal(&[r#"train.prediction_type="edm""#, "train.snr_gamma=5.0"]);
    assert!(e.contains("remove snr_gamma"), "{e}");
    // diffuse's own EDM Heun samples an EDM model but cannot be its pipeline's scheduler.
    let e = refusal(&[
        r#"train.prediction_type="edm""#,
        r#"scheduler._class_name="EDMHeunScheduler""#,
    ]);
    assert!(
        e.contains("diffusers has no such class") && e.contains("--sampler edm_heun"),
        "{e}"
    );
}

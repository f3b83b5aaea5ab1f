//! Helpers shared by the parity tests (`mod common;` in each test file).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `crates/diffuse-models/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every tensor of a safetensors file, on the CPU.
pub fn load_st(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// max |a − b| (shapes must agree).
pub fn max_abs_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// max |a − b| / max |b| (shapes must agree).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let m: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    max_abs_err(a, b) / m
}

/// A fixture's timestep tensor (any dtype, 0-d or 1-d) as f32 values.
pub fn timesteps(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Stable Diffusion's `pipeline_sd/` with `unet_sd1/` and `text_encoder_sd1/` as its `unet/` and
/// `text_encoder/`: gen_sd.py removed those two after checking they equal the fixtures byte for
/// byte.
pub fn sd_pipeline() -> tempfile::TempDir {
    let sd = fixtures().join("sd");
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in std::fs::read_dir(from).unwrap().flatten() {
            if f.path().is_file() && !f.file_name().to_string_lossy().starts_with("io") {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
    };
    for part in ["scheduler", "tokenizer", "vae"] {
        copy(&sd.join("pipeline_sd").join(part), &dir.path().join(part));
    }
    std::fs::copy(
        sd.join("pipeline_sd/model_index.json"),
        dir.path().join("model_index.json"),
    )
    .unwrap();
    copy(&sd.join("unet_sd1"), &dir.path().join("unet"));
    copy(
        &sd.join("text_encoder_sd1"),
        &dir.path().join("text_encoder"),
    );
    dir
}

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

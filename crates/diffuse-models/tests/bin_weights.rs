//! Model folders saved by diffusers with `safe_serialization=False` (`diffusion_pytorch_model.bin`,
//! `tools/fixtures/gen_bin.py`) load to exactly the weights of the safetensors folders they were
//! saved from: UNet2DModel, DiTTransformer2DModel, AutoencoderKL.

use candle_core::Device;
use diffuse_models::weights;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn max_abs_diff(a: &candle_nn::VarMap, b: &candle_nn::VarMap) -> f32 {
    let (a, b) = (a.data().lock().unwrap(), b.data().lock().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, v)| {
            let w = &b[k];
            (v.as_tensor() - w.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn bin_folders_load_the_same_weights_as_safetensors() {
    let dev = Device::Cpu;
    let bin = fixtures().join("bin");
    for m in ["unet_basic", "dit_p2_rgb"] {
        let files = weights::weight_files(&bin.join(m)).unwrap();
        assert!(
            files[0].ends_with("diffusion_pytorch_model.bin"),
            "{files:?}"
        );
        let (_, a) = weights::load_net(&fixtures().join(m), &dev).unwrap();
        let (_, b) = weights::load_net(&bin.join(m), &dev).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{m}");
    }
    let (_, a) = weights::load_vae(&fixtures().join("vae_gray_plain"), &dev).unwrap();
    let (_, b) = weights::load_vae(&bin.join("vae_gray_plain"), &dev).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0, "vae");
}

#[test]
fn an_evil_bin_in_a_model_folder_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(
        fixtures().join("unet_basic/config.json"),
        m.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("bin/evil.bin"),
        m.join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let e = weights::load_net(&m, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("refused: its pickle calls") && !e.contains('\n'),
        "{e}"
    );
}

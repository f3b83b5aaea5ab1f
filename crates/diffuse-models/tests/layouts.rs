//! Model folders in every layout diffusers saves (`tools/fixtures/gen_layouts.py`: `.bin`,
//! sharded `.bin`, sharded safetensors, the fp16 variant as safetensors and as `.bin`) for
//! UNet2DModel (class-conditional and not), DiTTransformer2DModel and AutoencoderKL load to
//! exactly the weights of the safetensors folders they were saved from (fp16: those weights
//! rounded to f16). The networks' outputs match diffusers through those folders' parity tests.
//! A `.bin` whose pickle calls `os.system` is refused before anything runs.

use candle_core::{DType, Device};
use diffuse_models::weights;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const MODELS: [&str; 4] = [
    "unet_basic",
    "unet_class_cond",
    "dit_p2_rgb",
    "vae_gray_plain",
];

/// The layouts and the files [`weights::weight_files`] must pick in each.
const LAYOUTS: [(&str, &str); 5] = [
    ("bin", "diffusion_pytorch_model.bin"),
    ("bin_sharded", "diffusion_pytorch_model-00001-of-"),
    ("safetensors_sharded", "diffusion_pytorch_model-00001-of-"),
    ("fp16", "diffusion_pytorch_model.fp16.safetensors"),
    ("bin_fp16", "diffusion_pytorch_model.fp16.bin"),
];

fn load(dir: &Path) -> candle_nn::VarMap {
    let dev = Device::Cpu;
    let r = match dir.file_name().and_then(|n| n.to_str()) {
        Some("vae_gray_plain") => weights::load_vae(dir, &dev).map(|(_, v)| v),
        _ => weights::load_net(dir, &dev).map(|(_, v)| v),
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// max |a − b| over all variables, with `b` rounded through f16 first when `f16`.
fn max_abs_diff(a: &candle_nn::VarMap, b: &candle_nn::VarMap, f16: bool) -> f32 {
    let (a, b) = (a.data().lock().unwrap(), b.data().lock().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, v)| {
            let mut w = b[k].as_tensor().clone();
            if f16 {
                w = w
                    .to_dtype(DType::F16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
            }
            (v.as_tensor() - w)
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
fn every_layout_diffusers_saves_loads_the_same_weights() {
    for m in MODELS {
        let reference = load(&fixtures().join(m));
        for (layout, first) in LAYOUTS {
            let dir = fixtures().join("layouts").join(layout).join(m);
            let files = weights::weight_files(&dir).unwrap();
            let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with(first), "{layout}/{m}: {files:?}");
            assert_eq!(
                files.len() > 1,
                layout.ends_with("sharded"),
                "{layout}/{m}: {files:?}"
            );
            let got = load(&dir);
            let d = max_abs_diff(&got, &reference, layout.contains("fp16"));
            assert_eq!(d, 0.0, "{layout}/{m}");
        }
    }
}

#[test]
fn an_evil_bin_in_a_model_folder_is_refused_in_one_line() {
    let marker = Path::new("/tmp/diffuse-evil-ran");
    let _ = std::fs::remove_file(marker);
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(
        fixtures().join("unet_basic/config.json"),
        m.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("layouts/evil.bin"),
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
    assert!(!marker.exists());
}

//! ONNX export parity (fixtures of `tools/fixtures/gen_onnx.py`, onnx 1.23.2 / onnxruntime
//! 1.31.1): every UNet, DiT and VAE-decoder fixture is exported again and must give the very
//! bytes onnxruntime ran (SHA-256), twice over; diffuse's own forward on the recorded inputs
//! (batch 2, and batch 3 at other sizes: the batch, height and width are symbolic) must match
//! onnxruntime's recorded outputs.

use candle_core::Device;
use diffuse_models::onnx::{export_folder, to_bytes, Component};
use diffuse_models::weights::{load_net, load_vae};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::{fixtures, load_st, rel_err, timesteps};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn exports_are_the_files_onnxruntime_ran_and_match_diffuse() {
    let text = std::fs::read_to_string(fixtures().join("onnx_fixtures.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let cases = index["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 11);
    let dev = Device::Cpu;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = fixtures().join(case["model_dir"].as_str().unwrap());
        let component: Component = case["component"].as_str().unwrap().parse().unwrap();
        let bytes = to_bytes(&export_folder(&dir, component, false).unwrap().model);
        let again = to_bytes(&export_folder(&dir, component, false).unwrap().model);
        assert!(bytes == again, "{name}: two exports differ");
        assert_eq!(
            hex(&bytes),
            case["onnx_sha256"].as_str().unwrap(),
            "{name}: the export changed since onnxruntime ran it; rerun tools/fixtures/run_onnx.sh"
        );

        let io = load_st(&fixtures().join(case["file"].as_str().unwrap()));
        for b in ["b2", "b3"] {
            let want = &io[&format!("{b}.output")];
            let got = if component == Component::VaeDecoder {
                let (vae, _) = load_vae(&dir, &dev).unwrap();
                vae.decode(&io[&format!("{b}.latent_sample")]).unwrap()
            } else {
                let (net, _) = load_net(&dir, &dev).unwrap();
                let labels = io.get(&format!("{b}.class_labels"));
                net.forward(
                    &io[&format!("{b}.sample")],
                    &timesteps(&io[&format!("{b}.timestep")]),
                    labels,
                )
                .unwrap()
            };
            let e = rel_err(&got, want);
            eprintln!("{name} {b} {:?}: max relative error {e:e}", want.dims());
            assert!(e <= 1e-4, "{name} {b}: relative error {e:e}");
        }
    }
}

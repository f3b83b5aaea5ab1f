//! ONNX export parity (fixtures of `tools/fixtures/gen_onnx.py`, onnx 1.23.2 / onnxruntime
//! 1.31.1): every UNet, DiT and VAE-decoder fixture and Stable Diffusion's UNet2DConditionModel
//! and CLIPTextModel fixtures are exported again and must give the very bytes onnxruntime ran
//! (SHA-256), twice over; diffuse's own forward on the recorded inputs (batch 2, and batch 3 at
//! other sizes: the batch, height, width and sequence are symbolic) must match onnxruntime's
//! recorded outputs.

use candle_core::{Device, Tensor};
use diffuse_models::onnx::{export_folder, to_bytes, Component};
use diffuse_models::text::ClipTextModel;
use diffuse_models::weights::{load_net, load_vae};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::{fixtures, load_st, rel_err, sd_pipeline, timesteps};

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
    assert_eq!(cases.len(), 16);
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
        let batches = case["batches"].as_object().unwrap();
        assert!(batches.len() >= 2, "{name}");
        for b in batches.keys() {
            let at = |k: &str| &io[&format!("{b}.{k}")];
            // (output name, diffuse's value)
            let got: Vec<(&str, Tensor)> = match component {
                Component::VaeDecoder => {
                    let (vae, _) = load_vae(&dir, &dev).unwrap();
                    vec![("output", vae.decode(at("latent_sample")).unwrap())]
                }
                Component::TextEncoder => {
                    let (te, _) = ClipTextModel::load(&dir, &dev).unwrap();
                    let out = te.forward(at("input_ids")).unwrap();
                    vec![
                        ("last_hidden_state", out.last_hidden_state),
                        ("pooler_output", out.pooler_output),
                    ]
                }
                _ => {
                    let (net, _) = load_net(&dir, &dev).unwrap();
                    // class labels, or a text-conditional UNet's encoder hidden states
                    let cond = io
                        .get(&format!("{b}.class_labels"))
                        .or_else(|| io.get(&format!("{b}.encoder_hidden_states")));
                    let out = net
                        .forward(at("sample"), &timesteps(at("timestep")), cond)
                        .unwrap();
                    vec![("output", out)]
                }
            };
            for (o, got) in got {
                let want = at(o);
                let e = rel_err(&got, want);
                eprintln!("{name} {b} {o} {:?}: max relative error {e:e}", want.dims());
                assert!(e <= 1e-4, "{name} {b} {o}: relative error {e:e}");
            }
        }
    }
}

#[test]
fn a_stable_diffusion_pipeline_exports_its_unet_and_text_encoder() {
    let text = std::fs::read_to_string(fixtures().join("onnx_fixtures.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let sha = |case: &str| {
        index["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == case)
            .unwrap()["onnx_sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let dir = sd_pipeline();
    for (component, case, what) in [
        (Component::Denoiser, "unet_sd1", "UNet2DConditionModel"),
        (Component::Unet, "unet_sd1", "UNet2DConditionModel"),
        (Component::TextEncoder, "text_encoder_sd1", "CLIPTextModel"),
    ] {
        let e = export_folder(dir.path(), component, false).unwrap();
        assert_eq!(e.what, what);
        // the pipeline's components are copies of the fixtures: the same bytes
        assert_eq!(hex(&to_bytes(&e.model)), sha(case), "{component:?}");
    }
    let e = export_folder(dir.path(), Component::Transformer, false).unwrap_err();
    assert!(e.to_string().contains("UNet2DConditionModel"), "{e}");
    // a bare CLIPTextModel folder exports its encoder by default; it has no denoiser
    let te = fixtures().join("sd/text_encoder_sd1");
    let e = export_folder(&te, Component::Denoiser, false).unwrap();
    assert_eq!(hex(&to_bytes(&e.model)), sha("text_encoder_sd1"));
    let e = export_folder(&te, Component::Unet, false).unwrap_err();
    assert!(e.to_string().contains("text-encoder"), "{e}");
    // a UNet folder has no text encoder
    let unet = fixtures().join("sd/unet_sd1");
    let e = export_folder(&unet, Component::TextEncoder, false).unwrap_err();
    assert!(e.to_string().contains("no text_encoder/"), "{e}");
}

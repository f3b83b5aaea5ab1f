//! Legacy and unknown keys of a model `config.json` load as diffusers 0.42.1 loads them
//! (fixture of `tools/fixtures/gen_legacy_configs.py`, issue #20 item 4): each case's config
//! gives the values diffusers' `from_config` ends with, and the block classes it builds.

use diffuse_models::{AutoencoderKLConfig, DiTTransformer2DConfig, UNet2DConfig};
use serde_json::Value;
use std::path::Path;

/// Keys diffusers takes but diffuse keeps only when given (`AutoencoderKL`'s latent statistics,
/// null by default).
const UNREAD_NULL_DEFAULTS: [&str; 2] = ["latents_mean", "latents_std"];

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        _ => a == b,
    }
}

#[test]
fn legacy_and_unknown_keys_load_as_diffusers_loads_them() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy_configs.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = case["config"].to_string();
        let ours: Value = match case["built"].as_str().unwrap() {
            "UNet2DModel" => serde_json::to_value(UNet2DConfig::from_json_str(&text).unwrap()),
            "AutoencoderKL" => {
                serde_json::to_value(AutoencoderKLConfig::from_json_str(&text).unwrap())
            }
            "DiTTransformer2DModel" => {
                serde_json::to_value(DiTTransformer2DConfig::from_json_str(&text).unwrap())
            }
            other => panic!("{name}: {other}"),
        }
        .unwrap();
        for (key, theirs) in case["result"].as_object().unwrap() {
            let blocks = match key.as_str() {
                "down_block_types" => &case["down_blocks"],
                "up_block_types" => &case["up_blocks"],
                _ => theirs,
            };
            match ours.get(key) {
                None if theirs.is_null() && UNREAD_NULL_DEFAULTS.contains(&key.as_str()) => {}
                Some(v) => assert!(
                    same(v, blocks),
                    "{name}: {key}: ours {v}, diffusers {blocks}"
                ),
                None => panic!("{name}: {key} missing (diffusers: {theirs})"),
            }
        }
        assert!(ours.get("_use_default_values").is_none(), "{name}");
    }
}

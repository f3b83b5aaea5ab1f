//! The target bodies. File-based readers get the input written to a scratch file first (the
//! same path a user's file takes); results are dropped: only a panic, an abort, a runaway
//! allocation or a hang is a finding.

use candle_core::Device;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

thread_local! {
    static SCRATCH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// A scratch folder of this thread (under the temp dir, named by pid and thread), made once.
fn scratch() -> PathBuf {
    SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| {
                let id = format!("{:?}", std::thread::current().id())
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect::<String>();
                let d =
                    std::env::temp_dir().join(format!("diffuse-fuzz-{}-{id}", std::process::id()));
                std::fs::create_dir_all(&d).expect("a scratch folder in the temp dir");
                d
            })
            .clone()
    })
}

fn put(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write the scratch file");
    p
}

/// The smallest UNet2DModel config: one level, no attention (its weights are a few KB, so a
/// safetensors file of it is a short fuzz input).
pub const TINY_UNET: &str = r#"{"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1,
 "out_channels": 1, "block_out_channels": [4], "down_block_types": ["DownBlock2D"],
 "up_block_types": ["UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 2,
 "add_attention": false, "attention_head_dim": 2}"#;

/// safetensors header, offsets and dtypes, through the loader of a model folder.
pub fn safetensors(data: &[u8]) {
    let dir = scratch().join("safetensors");
    std::fs::create_dir_all(&dir).expect("scratch");
    put(&dir, "config.json", TINY_UNET.as_bytes());
    put(&dir, "diffusion_pytorch_model.safetensors", data);
    let _ = diffuse_models::weights::load_net(&dir, &Device::Cpu);
}

/// A PyTorch `.bin` (torch.save zip + pickle), through the restricted unpickler.
pub fn pickle(data: &[u8]) {
    let p = put(&scratch(), "model.bin", data);
    let _ = diffuse_models::torch_bin::read(&p, &Device::Cpu);
}

/// Config JSON: Python-flavoured JSON, scheduler configs (and a plan of a few steps from them),
/// UNet (also text-conditioned), DiT, VAE and CLIP text encoder configs.
pub fn config_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = diffuse_core::pyjson::parse(text);
    if let Ok(cfg) = diffuse_core::config::SchedulerConfig::from_json_str(text) {
        let steps = 1 + data.len() % 50;
        let _ = diffuse_core::sampler::Sampler::new(&cfg, steps);
    }
    let _ = diffuse_models::NetworkConfig::from_json_str(text);
    let _ = diffuse_models::config::AutoencoderKLConfig::from_json_str(text);
    let _ = diffuse_models::text::ClipTextConfig::from_json_str(text);
}

/// A tokenizer folder's files: the bytes as `tokenizer.json` (transformers 5), else split at
/// the first NUL into `vocab.json` and `merges.txt` (hub folders); what loads must tokenize.
pub fn tokenizer(data: &[u8]) {
    let dir = scratch().join("tokenizer");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    match data.iter().position(|&b| b == 0) {
        None => {
            put(&dir, "tokenizer.json", data);
        }
        Some(i) => {
            put(&dir, "vocab.json", &data[..i]);
            put(&dir, "merges.txt", &data[i + 1..]);
        }
    }
    if let Ok(t) = diffuse_models::text::ClipTokenizer::from_folder(&dir) {
        for text in [
            "a red apple, fruit",
            "  CAFÉ 🍎 日本!",
            "<|startoftext|>x<|endoftext|>",
            "",
        ] {
            let _ = t.encode_padded(text, t.model_max_length().min(64));
        }
    }
}

/// The user's TOML training config.
pub fn train_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = diffuse_train::trainer::TrainConfig::from_toml(text);
    }
}

/// Image files (PNG, JPEG) as the data loaders and `noise` read them.
pub fn image(data: &[u8]) {
    let p = put(&scratch(), "image", data);
    let _ = diffuse_data::image_io::load_image(&p, &Device::Cpu);
}

/// IDX images and labels (raw or gzip): the first two bytes say where the images file ends.
pub fn idx(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let split = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (images, labels) = data[2..].split_at(split);
    let dir = scratch();
    let ip = put(&dir, "images-idx3-ubyte", images);
    let lp = put(&dir, "labels-idx1-ubyte", labels);
    let _ = diffuse_data::datasets::read_idx(&ip);
    if let Ok(ds) = diffuse_data::datasets::IdxDataset::open(&ip, &lp) {
        use diffuse_data::datasets::Dataset;
        for i in 0..ds.len().min(64) {
            let _ = ds.get(i);
        }
    }
}

/// A CIFAR-10 binary batch (`test_batch.bin`), every record read back.
pub fn cifar(data: &[u8]) {
    let dir = scratch().join("cifar");
    std::fs::create_dir_all(&dir).expect("scratch");
    put(&dir, "test_batch.bin", data);
    use diffuse_data::datasets::{Cifar10, Dataset, Split};
    if let Ok(ds) = Cifar10::open_dir(&dir, Split::Test) {
        for i in 0..ds.len().min(64) {
            let _ = ds.get(i);
        }
    }
}

/// The ONNX writer's round trip over UNet configs drawn from the input: a config diffuse
/// builds must export to bytes that decode to the same graph.
pub fn onnx_roundtrip(data: &[u8]) {
    use prost::Message;
    let b = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
    let levels = 1 + b(0) % 2;
    let width = [2, 4, 8][b(1) % 3];
    let down = ["DownBlock2D", "AttnDownBlock2D"];
    let up = ["UpBlock2D", "AttnUpBlock2D"];
    let downs: Vec<&str> = (0..levels).map(|i| down[b(2 + i) % 2]).collect();
    let ups: Vec<&str> = (0..levels).map(|i| up[b(4 + i) % 2]).collect();
    let channels: Vec<usize> = (0..levels).map(|i| width * (1 + i)).collect();
    let class = match b(6) % 3 {
        0 => serde_json::Value::Null,
        n => (n * 3).into(),
    };
    let pick = |opts: &[usize], i: usize| opts[b(i) % opts.len()];
    let pick_s = |opts: &[&'static str], i: usize| opts[b(i) % opts.len()];
    let config = serde_json::json!({
        "_class_name": "UNet2DModel",
        "sample_size": 4 * (1 + b(7) % 2),
        "in_channels": 1 + b(8) % 3,
        "out_channels": 1 + b(9) % 3,
        "block_out_channels": channels,
        "down_block_types": downs,
        "up_block_types": ups,
        "layers_per_block": 1 + b(10) % 2,
        "norm_num_groups": pick(&[1, 2], 11),
        "attention_head_dim": pick(&[1, 2, 4], 12),
        "add_attention": b(13) % 2 == 0,
        "num_class_embeds": class,
        "time_embedding_type": pick_s(&["positional", "fourier"], 14),
        "resnet_time_scale_shift": pick_s(&["default", "scale_shift"], 15),
        "center_input_sample": b(16) % 2 == 1,
        "flip_sin_to_cos": b(17) % 2 == 1,
        "freq_shift": b(18) % 2,
    });
    let Ok(cfg) = diffuse_models::config::UNet2DConfig::from_json_str(&config.to_string()) else {
        return;
    };
    let Ok((model, _)) = diffuse_models::weights::build_unet(&cfg, &Device::Cpu) else {
        return;
    };
    let proto = diffuse_models::onnx::export_unet(&model)
        .unwrap_or_else(|e| panic!("a UNet diffuse builds must export: {e}; config {config}"));
    let bytes = diffuse_models::onnx::to_bytes(&proto);
    let back = diffuse_models::onnx::proto::ModelProto::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("the writer's bytes must decode: {e}; config {config}"));
    assert!(
        back == proto,
        "the ONNX round trip changed the graph; config {config}"
    );
}

/// Every HTTP request body of `POST /v1/images/generations`, with the default limits.
pub fn serve_body(data: &[u8]) {
    let cfg = diffuse_serve::ServeConfig::default();
    let _ = diffuse_serve::request::parse(data, &cfg);
}

/// The boundary of the `serve_form` bodies (the seeds use it).
pub const FORM_BOUNDARY: &str = "diffuse-fuzz";

/// Every multipart body of `POST /v1/images/edits` with the default limits, then its image and
/// mask decoded and fitted as for a 1-channel 16 px model.
pub fn serve_form(data: &[u8]) {
    use diffuse_serve::upload::{self, Endpoint};
    let cfg = diffuse_serve::ServeConfig::default();
    let ct = format!("multipart/form-data; boundary={FORM_BOUNDARY}");
    let body = data.to_vec().into();
    let parsed = futures_executor::block_on(upload::parse(Some(&ct), body, &cfg, Endpoint::Edits));
    if let Ok(req) = parsed {
        if let Some(up) = &req.edit {
            let _ = diffuse_serve::request::decode_upload(up, 1, 16, cfg.max_size);
        }
    }
}

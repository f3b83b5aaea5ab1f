//! Text-to-image end to end: a tiny captioned set in OpenMoji's layout, a tiny VAE, then
//! `diffuse train` with `[model] type = "unet2d_condition"` (exact resume included),
//! `diffuse sample --prompt`, and the one-line errors of bad text configs.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{assert_one_line_error, diffuse, stderr};

/// Twelve emoji in OpenMoji's layout (`data/openmoji.csv` + `color/svg/`): coloured squares,
/// circles and hearts with annotations and tags.
fn captioned_set(root: &Path) -> PathBuf {
    let dir = root.join("emoji");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("color/svg")).unwrap();
    let mut csv = String::from("emoji,hexcode,group,subgroups,annotation,tags,skintone\n");
    let shapes = [
        (
            "square",
            "symbols",
            r#"<rect x="12" y="12" width="48" height="48""#,
        ),
        ("circle", "symbols", r#"<circle cx="36" cy="36" r="24""#),
        (
            "heart",
            "smileys-emotion",
            r#"<path d="M36 60 L12 30 A12 12 0 0 1 36 22 A12 12 0 0 1 60 30 Z""#,
        ),
    ];
    let colours = [
        ("red", "#d22f27"),
        ("green", "#5c9e31"),
        ("blue", "#1e50a0"),
        ("yellow", "#fcea2b"),
    ];
    let mut k = 0;
    for (shape, group, svg) in shapes {
        for (colour, hex) in colours {
            let code = format!("E{k:03}");
            csv.push_str(&format!(
                "x,{code},{group},shape,{colour} {shape},\"{shape}, {colour}, geometric\",\n"
            ));
            std::fs::write(
                dir.join(format!("color/svg/{code}.svg")),
                format!(
                    r##"<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">{svg} fill="{hex}" stroke="#000" stroke-width="2"/></svg>"##
                ),
            )
            .unwrap();
            k += 1;
        }
    }
    std::fs::write(dir.join("data/openmoji.csv"), csv).unwrap();
    dir
}

fn tiny_vae(root: &Path, data: &Path) -> PathBuf {
    let cfg = root.join("vae.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[model]
_class_name = "AutoencoderKL"
block_out_channels = [8, 8]
down_block_types = ["DownEncoderBlock2D", "DownEncoderBlock2D"]
up_block_types = ["UpDecoderBlock2D", "UpDecoderBlock2D"]
layers_per_block = 1
latent_channels = 4
norm_num_groups = 4
[vae]
eval_images = 0
[data]
name = "{}"
size = 16
batch_size = 4
workers = 1
[train]
max_steps = 2
checkpoint_every = 2
sample_every = 0
"#,
            data.display()
        ),
    )
    .unwrap();
    let out = root.join("vae");
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out.join("vae_ema")
}

/// A tiny text-to-image config over `data` through `vae`.
fn text_config(root: &Path, data: &Path, vae: &Path) -> PathBuf {
    let cfg = root.join("text.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[model]
type = "unet2d_condition"
block_out_channels = [16, 32]
down_block_types = ["CrossAttnDownBlock2D", "DownBlock2D"]
up_block_types = ["UpBlock2D", "CrossAttnUpBlock2D"]
layers_per_block = 1
attention_head_dim = [2, 4]
norm_num_groups = 8
[text_encoder]
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32
max_length = 8
merges = 40
[captions]
holdout = ["blue heart", "Yellow Circle"]
[data]
name = "{}"
vae = "{}"
size = 16
batch_size = 4
workers = 1
[train]
max_steps = 4
checkpoint_every = 2
sample_every = 4
sample_steps = 2
learning_rate = 1e-3
lr_scheduler = "constant"
"#,
            data.display(),
            vae.display()
        ),
    )
    .unwrap();
    cfg
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend(extra);
    diffuse(&args)
}

/// `diffuse sample --model MODEL --quiet ARGS…`.
fn sample(model: &Path, args: &[&str]) -> Output {
    let mut all = vec!["sample", "--model", model.to_str().unwrap(), "--quiet"];
    all.extend_from_slice(args);
    diffuse(&all)
}

#[test]
fn a_text_to_image_model_trains_resumes_exactly_and_samples_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let data = captioned_set(dir.path());
    let vae = tiny_vae(dir.path(), &data);
    let cfg = text_config(dir.path(), &data, &vae);

    let full = dir.path().join("full");
    let o = train(&cfg, &full, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("model_index.json")).unwrap())
            .unwrap();
    assert_eq!(index["_class_name"], "StableDiffusionPipeline");
    assert_eq!(index["text_encoder"][1], "CLIPTextModel");
    for f in [
        "unet/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_ema/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "vae/config.json",
        "samples/step-4.png",
    ] {
        assert!(full.join(f).exists(), "{f} missing");
    }
    let unet: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(unet["_class_name"], "UNet2DConditionModel");
    assert_eq!(unet["cross_attention_dim"], 16);
    assert_eq!(
        (unet["in_channels"].as_u64(), unet["sample_size"].as_u64()),
        (Some(4), Some(8))
    );

    // Stopped at step 2 and resumed: the same weights as the straight run, text encoder too.
    let part = dir.path().join("part");
    let o = train(&cfg, &part, &["--max-steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = diffuse(&[
        "train",
        "--resume",
        part.to_str().unwrap(),
        "--max-steps",
        "4",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "unet_ema/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder_ema/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(part.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }

    // convert keeps the text side: the converted pipeline (f16 UNet) still takes prompts.
    let conv = dir.path().join("conv");
    let o = diffuse(&[
        "convert",
        "--model",
        full.to_str().unwrap(),
        "--output",
        conv.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "tokenizer/vocab.json",
        "text_encoder/model.safetensors",
        "unet/config.json",
    ] {
        assert!(conv.join(f).exists(), "convert dropped {f}");
    }
    // One image of "red square" from a converted or quantized folder.
    let red_square = |model: &Path, png: &str| {
        let png = dir.path().join(png);
        let args = [
            "--prompt",
            "red square",
            "--steps",
            "2",
            "--num-images",
            "1",
        ];
        let o = sample(
            model,
            &[&args[..], &["--output", png.to_str().unwrap()]].concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    red_square(&conv, "conv.png");

    // quantize keeps it too (int8 UNet, the EMA text encoder as text_encoder/).
    let q = dir.path().join("int8");
    let o = diffuse(&[
        "quantize",
        "--model",
        full.to_str().unwrap(),
        "--output",
        q.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(q.join("text_encoder/model.safetensors")).unwrap(),
        std::fs::read(full.join("text_encoder_ema/model.safetensors")).unwrap()
    );
    red_square(&q, "q.png");

    let png = dir.path().join("apple.png");
    let o = sample(
        &full,
        &[
            "--prompt",
            "blue heart",
            "--negative-prompt",
            "red",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--output",
            png.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(png.exists());
    // --clip-skip: the embeddings of an earlier layer draw another image from the same seed.
    let at_skip = |k: &str| {
        let png = dir.path().join(format!("skip{k}.png"));
        let o = sample(
            &full,
            &[
                "--prompt",
                "blue heart",
                "--clip-skip",
                k,
                "--steps",
                "2",
                "--num-images",
                "1",
                "--output",
                png.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(png).unwrap()
    };
    assert_ne!(at_skip("0"), at_skip("1"), "--clip-skip 1 changed nothing");
    let o = sample(&full, &["--prompt", "blue heart", "--clip-skip", "99"]);
    assert_one_line_error(&o, "--clip-skip 99: the text encoder has");
    let o = sample(&full, &["--steps", "2"]);
    assert_one_line_error(&o, "give a prompt");
    let o = sample(
        &full,
        &[
            "--prompt",
            "a",
            "--prompt",
            "b",
            "--prompt",
            "c",
            "--num-images",
            "2",
            "--steps",
            "2",
        ],
    );
    assert_one_line_error(&o, "3 prompts for 2 images");
}

#[test]
fn bad_text_configs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = captioned_set(dir.path());
    let vae = tiny_vae(dir.path(), &data);
    let cfg = text_config(dir.path(), &data, &vae);
    let n = std::cell::Cell::new(0);
    let run = |set: &[&str]| {
        n.set(n.get() + 1);
        let out = dir.path().join(format!("out{}", n.get()));
        let mut extra = vec![];
        for s in set {
            extra.extend(["--set", s]);
        }
        train(&cfg, &out, &extra)
    };
    assert_one_line_error(
        &run(&[r#"captions.holdout=["purple square"]"#]),
        "\"purple square\" is no caption",
    );
    // Checked before the output folder is claimed: nothing is left behind.
    assert_one_line_error(&run(&["data.vae=\"\""]), "data.vae");
    assert!(!dir.path().join(format!("out{}", n.get())).exists());
    assert_one_line_error(
        &run(&["model.cross_attention_dim=8"]),
        "text_encoder.hidden_size",
    );
    assert_one_line_error(&run(&["train.mixed_precision=\"bf16\""]), "mixed_precision");
    assert_one_line_error(
        &run(&["model.type=\"unet\""]),
        "[text_encoder] and [captions]",
    );
    assert_one_line_error(
        &run(&["text_encoder.num_attention_heads=3"]),
        "num_attention_heads",
    );
    assert_one_line_error(
        &run(&["model.attention_head_dim=[2, 5]"]),
        "attention_head_dim",
    );
    // MNIST has no captions.
    assert_one_line_error(&run(&["data.name=\"mnist\""]), "no caption");
}

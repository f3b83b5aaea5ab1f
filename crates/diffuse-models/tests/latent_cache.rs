//! The latent cache: a small labelled data set encoded with the `vae_gray_plain` fixture into
//! shards, read back, and compared with encoding the same images directly.

use candle_core::{Device, Tensor};
use diffuse_data::datasets::{Dataset, Sample};
use diffuse_data::transform::{Fit, Transform};
use diffuse_models::latent_cache::{encode_dataset, load_latents, EncodeOptions, INDEX_NAME};
use diffuse_models::weights::{load_vae, read_vae_config};
use std::path::{Path, PathBuf};

/// `n` grey 16×16 images with a different gradient each, labels i mod 3.
struct Gradients {
    n: usize,
    channels: usize,
}

impl Dataset for Gradients {
    fn len(&self) -> usize {
        self.n
    }
    fn get(&self, i: usize) -> diffuse_data::Result<Sample> {
        let pixels = (0..16 * 16 * self.channels)
            .map(|p| ((p * (i + 3) * 7 + i * 31) % 256) as u8)
            .collect();
        Ok(Sample {
            pixels,
            width: 16,
            height: 16,
            channels: self.channels,
            label: Some((i % 3) as u32),
        })
    }
    fn num_classes(&self) -> Option<usize> {
        Some(3)
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn describe(&self) -> String {
        format!("{} gradients", self.n)
    }
}

fn vae_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/vae_{name}"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn encode_shards_read_back_and_scale() {
    let ds = Gradients { n: 7, channels: 1 };
    let transform = Transform {
        size: 16,
        fit: Fit::Pad,
        hflip: false,
    };
    let opts = EncodeOptions {
        batch_size: 2,
        shard_size: 3,
        limit: None,
        transform,
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("latents");
    let dev = Device::Cpu;
    let mut calls = Vec::new();
    let index = encode_dataset(
        &vae_dir("gray_plain"),
        &ds,
        &opts,
        &out,
        &dev,
        &mut |d, t| calls.push((d, t)),
    )
    .unwrap();
    assert_eq!(index.count, 7);
    assert_eq!(index.latent_shape, [2, 4, 4]);
    let counts: Vec<usize> = index.shards.iter().map(|s| s.count).collect();
    assert_eq!(counts, vec![3, 3, 1]);
    assert_eq!(calls.last(), Some(&(7, 7)));

    // The shards hold what encoding the same images directly gives.
    let set = load_latents(&out, &dev).unwrap();
    assert_eq!(set.index, index);
    assert_eq!(set.labels, Some(vec![0, 1, 2, 0, 1, 2, 0]));
    let pixels: Vec<f32> = (0..7)
        .flat_map(|i| transform.apply(&ds.get(i).unwrap(), false))
        .collect();
    let x = Tensor::from_vec(pixels, (7, 1, 16, 16), &dev).unwrap();
    let (vae, _) = load_vae(&vae_dir("gray_plain"), &dev).unwrap();
    let post = vae.encode(&x).unwrap();
    assert!(max_abs_diff(&set.mean, &post.mean) < 1e-5);
    assert!(max_abs_diff(&set.std, &post.std().unwrap()) < 1e-5);

    // Scaling factor = 1 / std of z ~ N(mean, std²) over the data, written into vae/.
    let m: Vec<f32> = set.mean.flatten_all().unwrap().to_vec1().unwrap();
    let s: Vec<f32> = set.std.flatten_all().unwrap().to_vec1().unwrap();
    let n = m.len() as f64;
    let mu = m.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = m.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / n
        + s.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
    assert!((index.latent_std - var.sqrt()).abs() < 1e-9 * var.sqrt().max(1.0));
    let saved = read_vae_config(&out.join("vae")).unwrap();
    assert_eq!(saved.scaling_factor, 1.0 / index.latent_std);
    assert_eq!(saved.shift_factor, Some(0.1159), "other keys unchanged");
    let (again, _) = load_vae(&out.join("vae"), &dev).unwrap();
    assert_eq!(
        max_abs_diff(&again.encode(&x).unwrap().mean, &post.mean),
        0.0,
        "same weights"
    );

    // --limit, and a cache without its index is not read.
    let small = tmp.path().join("small");
    let opts = EncodeOptions {
        limit: Some(2),
        ..opts
    };
    let i2 = encode_dataset(
        &vae_dir("gray_plain"),
        &ds,
        &opts,
        &small,
        &dev,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(i2.count, 2);
    std::fs::remove_file(small.join(INDEX_NAME)).unwrap();
    let e = load_latents(&small, &dev).unwrap_err().to_string();
    assert!(e.contains("not a complete latent cache"), "{e}");
}

#[test]
fn channel_mismatch_is_a_clear_error() {
    let ds = Gradients { n: 2, channels: 1 };
    let opts = EncodeOptions {
        batch_size: 2,
        shard_size: 2,
        limit: None,
        transform: Transform {
            size: 16,
            fit: Fit::Pad,
            hflip: false,
        },
    };
    let tmp = tempfile::tempdir().unwrap();
    let e = encode_dataset(
        &vae_dir("rgb_attn"),
        &ds,
        &opts,
        tmp.path(),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("1 channels") && e.contains("in_channels 3"),
        "{e}"
    );
}

#[test]
fn latent_batches_permute_scale_and_resume() {
    use diffuse_core::rng::ReplayNoise;
    use diffuse_data::loader::Position;
    use diffuse_models::latent_cache::LatentBatches;
    let ds = Gradients { n: 7, channels: 1 };
    let opts = EncodeOptions {
        batch_size: 7,
        shard_size: 7,
        limit: None,
        transform: Transform {
            size: 16,
            fit: Fit::Pad,
            hflip: false,
        },
    };
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    encode_dataset(
        &vae_dir("gray_plain"),
        &ds,
        &opts,
        tmp.path(),
        &dev,
        &mut |_, _| {},
    )
    .unwrap();
    let set = load_latents(tmp.path(), &dev).unwrap();
    let zeros = || {
        ReplayNoise::new(
            (0..4).map(|_| Tensor::zeros((2, 2, 4, 4), candle_core::DType::F32, &dev).unwrap()),
        )
    };
    let mut noise = zeros();
    let mut b = LatentBatches::new(set.clone(), 2, 5, 2.0, 0.5, Position::default()).unwrap();
    // With ε = 0 a batch is (mean − 0.5)·2 of its rows: find them in the cache.
    let mut seen = Vec::new();
    let mut third = None;
    for k in 0..3 {
        let (x, labels) = b.next_batch(&mut noise).unwrap();
        let mean = ((x / 2.0).unwrap() + 0.5).unwrap();
        for r in 0..2 {
            let row = mean.get(r).unwrap();
            let j = (0..7)
                .find(|&j| max_abs_diff(&set.mean.get(j).unwrap(), &row) < 1e-6)
                .expect("a row of the cache");
            assert_eq!(labels.as_ref().unwrap()[r], set.labels.as_ref().unwrap()[j]);
            seen.push(j);
        }
        if k == 2 {
            third = Some(mean);
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        6,
        "one epoch: 3 batches of distinct samples (one dropped)"
    );
    assert_eq!(b.position(), Position { epoch: 0, batch: 3 });
    b.next_batch(&mut noise).unwrap();
    assert_eq!(b.position(), Position { epoch: 1, batch: 1 });
    // Resuming at (0, 2) hands out the third batch again.
    let mut again =
        LatentBatches::new(set, 2, 5, 2.0, 0.5, Position { epoch: 0, batch: 2 }).unwrap();
    let (x, _) = again.next_batch(&mut zeros()).unwrap();
    let mean = ((x / 2.0).unwrap() + 0.5).unwrap();
    assert_eq!(max_abs_diff(&mean, &third.unwrap()), 0.0);
}

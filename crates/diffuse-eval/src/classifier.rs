//! A small MNIST CNN trained by diffuse (`diffuse eval train-classifier`), the feature net of
//! classifier-FID (the common practice for MNIST-scale models, where Inception features say
//! little), of class accuracy for class-conditional samples, and of an IS-style score.
//!
//! conv 3×3 (16) → pool → conv 3×3 (32) → pool → conv 3×3 (64) → pool → fc 128 (features, before its ReLU) →
//! fc 10. Input: one 28×28 channel in [−1, 1]; other sizes are resized bilinearly to 28 first
//! (16-px samples), colour is turned to luma. Half the training images go through the same
//! 28 → 16 → 28 round trip, so 16-px models are judged by a classifier that has seen such images.

use crate::images::{ImageBatch, ImageSource};
use crate::resize::{resize, ResizeMode};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Conv2d, Linear, Optimizer};
use diffuse_data::datasets::Dataset;
use diffuse_data::transform::{Fit, Transform};
use diffuse_models::ops;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The committed weights and their record (`diffuse eval train-classifier` rewrites both).
pub const EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../assets/mnist-classifier.safetensors");
pub const EMBEDDED_CONFIG: &str = include_str!("../assets/mnist-classifier.json");

pub const INPUT_SIZE: usize = 28;
pub const NUM_CLASSES: usize = 10;
pub const FEATURE_DIM: usize = 128;
/// Channels of the three convolutions of a new training (loading reads them from the weights).
pub const CHANNELS: [usize; 3] = [32, 64, 64];

/// The record written next to the weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassifierRecord {
    pub architecture: String,
    pub input: String,
    pub feature_dim: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    pub degrade_prob: f64,
    /// Random translation of training images by up to this many pixels per axis.
    #[serde(default)]
    pub max_shift: usize,
    /// Dropout on the fc1 activations during training.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// The features are fc1's pre-activations divided by this: the square root of their mean
    /// per-unit variance over the clean MNIST training images (so classifier-FID is in
    /// readable units; 1 for records that predate it).
    #[serde(default = "one")]
    pub feature_scale: f64,
    /// MNIST test accuracy on the 28-px images.
    pub test_accuracy: f64,
    /// MNIST test accuracy after the 28 → 16 → 28 round trip.
    pub test_accuracy_16px: f64,
    pub train_seconds: f64,
    pub command: String,
}

pub struct MnistClassifier {
    convs: [Conv2d; 3],
    fc1: Linear,
    fc2: Linear,
    /// Features = fc1 pre-activations / `feature_scale`.
    feature_scale: f64,
    tag: String,
}

fn one() -> f64 {
    1.0
}

fn names() -> [&'static str; 5] {
    ["conv1", "conv2", "conv3", "fc1", "fc2"]
}

/// Shapes of (weight, bias) per layer.
fn shapes([a, b, c]: [usize; 3]) -> Vec<(Vec<usize>, usize)> {
    vec![
        (vec![a, 1, 3, 3], a),
        (vec![b, a, 3, 3], b),
        (vec![c, b, 3, 3], c),
        (vec![FEATURE_DIM, c * 3 * 3], FEATURE_DIM),
        (vec![NUM_CLASSES, FEATURE_DIM], NUM_CLASSES),
    ]
}

impl MnistClassifier {
    fn from_map(t: &HashMap<String, Tensor>, tag: String) -> Result<Self> {
        let get = |n: String, shape: &[usize]| -> Result<Tensor> {
            let v = t
                .get(&n)
                .ok_or_else(|| Error::File(format!("classifier weights: missing {n}")))?;
            if v.dims() != shape {
                return Err(Error::File(format!(
                    "classifier weights: {n} has shape {:?}, expected {shape:?}",
                    v.dims()
                )));
            }
            Ok(v.to_dtype(DType::F32)?)
        };
        let mut layers = Vec::new();
        // Channel counts from the convolutions' weights (earlier trainings were narrower).
        let out_ch = |n: &str| t.get(&format!("{n}.weight")).map_or(0, |w| w.dims()[0]);
        let channels = [out_ch("conv1"), out_ch("conv2"), out_ch("conv3")];
        for (name, (ws, bs)) in names().iter().zip(shapes(channels)) {
            layers.push((
                get(format!("{name}.weight"), &ws)?,
                get(format!("{name}.bias"), &[bs])?,
            ));
        }
        let conv = |i: usize| {
            let (w, b) = layers[i].clone();
            Conv2d::new(
                w,
                Some(b),
                candle_nn::Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                },
            )
        };
        Ok(MnistClassifier {
            convs: [conv(0), conv(1), conv(2)],
            fc1: Linear::new(layers[3].0.clone(), Some(layers[3].1.clone())),
            fc2: Linear::new(layers[4].0.clone(), Some(layers[4].1.clone())),
            feature_scale: 1.0,
            tag,
        })
    }

    /// The weights compiled into diffuse, with the feature scale of their record.
    pub fn embedded(device: &Device) -> Result<Self> {
        let record: ClassifierRecord = serde_json::from_str(EMBEDDED_CONFIG)
            .map_err(|e| Error::File(format!("embedded classifier record: {e}")))?;
        Ok(Self::from_safetensors(EMBEDDED_WEIGHTS, device)?
            .with_feature_scale(record.feature_scale))
    }

    /// Divides the features by `scale` (named in [`Self::feature_net`]).
    pub fn with_feature_scale(mut self, scale: f64) -> Self {
        if scale != 1.0 {
            self.tag = format!("{}-over-{scale:.4}", self.tag);
        }
        self.feature_scale = scale;
        self
    }

    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::File(
                "no MNIST classifier weights in this build: run `diffuse eval train-classifier`"
                    .into(),
            ));
        }
        let t = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| Error::File(format!("classifier weights: {e}")))?;
        let sum = crate::torchscript::sha1_hex(bytes);
        Self::from_map(&t, format!("diffuse-mnist-cnn-{}-fc1-preact", &sum[..12]))
    }

    /// Names this net (and these weights) in statistics files.
    pub fn feature_net(&self) -> &str {
        &self.tag
    }

    /// (features `[b, 128]`: fc1 before its ReLU, logits `[b, 10]`) of `[b, 1, 28, 28]` inputs in
    /// [−1, 1].
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.forward_with_mask(x, None)
    }

    /// `fc1_mask`: the inverted-dropout mask `[b, 128]` of training (kept / (1 − p), or 0).
    fn forward_with_mask(&self, x: &Tensor, fc1_mask: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let mut h = x.clone();
        for c in &self.convs {
            h = ops::conv2d(&h, c)?.relu()?.max_pool2d(2)?;
        }
        // Features before the ReLU: units that never fire still carry a (random) projection.
        let f = ops::linear(&h.flatten_from(1)?, &self.fc1)?;
        let mut a = f.relu()?;
        if let Some(m) = fc1_mask {
            a = a.mul(m)?;
        }
        let logits = ops::linear(&a, &self.fc2)?;
        Ok(((f / self.feature_scale)?, logits))
    }
}

/// u8 images (any size, 1 or 3 channels) → `[b, 1, 28, 28]` f32 in [−1, 1].
pub fn prepare(batch: &ImageBatch, device: &Device) -> Result<Tensor> {
    let mut x = batch.to_tensor(device)?;
    if batch.c == 3 {
        let w = Tensor::new(&[0.299f32, 0.587, 0.114], device)?.reshape((1, 3, 1, 1))?;
        x = x.broadcast_mul(&w)?.sum_keepdim(1)?;
    } else if batch.c != 1 {
        return Err(Error::Input(format!(
            "the MNIST classifier takes 1 or 3 channels, not {}",
            batch.c
        )));
    }
    x = resize(&x, INPUT_SIZE, INPUT_SIZE, ResizeMode::Bilinear)?;
    Ok(((x / 127.5)? - 1.0)?)
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Probability that a training image goes through 28 → 16 → 28 first.
    pub degrade_prob: f64,
    /// Random translation by up to this many pixels per axis (background fill).
    pub max_shift: usize,
    /// Dropout probability on the fc1 activations.
    pub dropout: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Linear warm-up of the learning rate over this fraction of the steps, then cosine to 0.
    pub warmup_fraction: f64,
    /// Channels of the three convolutions.
    pub channels: [usize; 3],
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 3,
            batch_size: 64,
            learning_rate: 2e-3,
            seed: 0,
            degrade_prob: 0.5,
            max_shift: 2,
            dropout: 0.25,
            weight_decay: 1e-4,
            warmup_fraction: 0.03,
            channels: CHANNELS,
        }
    }
}

/// An MNIST split in memory: clean and round-tripped (28 → 16 → 28) u8 images, labels.
struct Split {
    clean: Vec<u8>,
    degraded: Vec<u8>,
    labels: Vec<u32>,
}

fn load_split(ds: &dyn Dataset, limit: usize) -> Result<Split> {
    let n = ds.len().min(limit);
    let px = INPUT_SIZE * INPUT_SIZE;
    let mut clean = Vec::with_capacity(n * px);
    let mut small = Vec::with_capacity(n * 16 * 16);
    let mut labels = Vec::with_capacity(n);
    let to16 = Transform {
        size: 16,
        fit: Fit::Resize,
        hflip: false,
    };
    for i in 0..n {
        let s = ds.get(i)?;
        if (s.channels, s.height, s.width) != (1, INPUT_SIZE, INPUT_SIZE) {
            return Err(Error::Input(format!(
                "{}: the classifier trains on 1×28×28 images",
                ds.describe()
            )));
        }
        labels.push(
            s.label.ok_or_else(|| {
                Error::Input(format!("{}: image {i} has no label", ds.describe()))
            })?,
        );
        clean.extend_from_slice(&s.pixels);
        small.extend(
            to16.apply(&s, false)
                .iter()
                .map(|v| ((v + 1.0) * 127.5).round() as u8),
        );
    }
    // 16 → 28 exactly as evaluation does it (bilinear), quantized as a PNG would be.
    let t = Tensor::from_vec(small, (n, 1, 16, 16), &Device::Cpu)?.to_dtype(DType::F32)?;
    let up = resize(&t, INPUT_SIZE, INPUT_SIZE, ResizeMode::Bilinear)?;
    let degraded = up
        .clamp(0f32, 255f32)?
        .round()?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    Ok(Split {
        clean,
        degraded,
        labels,
    })
}

fn to_input(pixels: &[u8], n: usize, device: &Device) -> Result<Tensor> {
    let x =
        Tensor::from_slice(pixels, (n, 1, INPUT_SIZE, INPUT_SIZE), device)?.to_dtype(DType::F32)?;
    Ok(((x / 127.5)? - 1.0)?)
}

/// Fraction of `pixels` classified as `labels`.
fn accuracy(net: &MnistClassifier, pixels: &[u8], labels: &[u32], dev: &Device) -> Result<f64> {
    let px = INPUT_SIZE * INPUT_SIZE;
    let mut right = 0usize;
    for s in (0..labels.len()).step_by(500) {
        let n = 500.min(labels.len() - s);
        let (_, logits) = net.forward(&to_input(&pixels[s * px..(s + n) * px], n, dev)?)?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        right += pred
            .iter()
            .zip(&labels[s..s + n])
            .filter(|(a, b)| a == b)
            .count();
    }
    Ok(right as f64 / labels.len() as f64)
}

/// √(mean over units of the variance of fc1's pre-activations) over `pixels` (f64 sums).
fn unit_scale(net: &MnistClassifier, pixels: &[u8], n: usize, dev: &Device) -> Result<f64> {
    let px = INPUT_SIZE * INPUT_SIZE;
    let mut sum = vec![0f64; FEATURE_DIM];
    let mut sq = vec![0f64; FEATURE_DIM];
    for s in (0..n).step_by(500) {
        let m = 500.min(n - s);
        let (f, _) = net.forward(&to_input(&pixels[s * px..(s + m) * px], m, dev)?)?;
        for row in f.to_vec2::<f32>()? {
            for (j, v) in row.into_iter().enumerate() {
                sum[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
    }
    let nf = n as f64;
    let var: f64 = (0..FEATURE_DIM)
        .map(|j| sq[j] / nf - (sum[j] / nf).powi(2))
        .sum::<f64>()
        / FEATURE_DIM as f64;
    Ok(var.sqrt().max(f64::MIN_POSITIVE))
}

/// Seeded PyTorch-default init (kaiming-uniform a = √5: U(±1/√fan_in) for weights and biases).
fn init(seed: u64, channels: [usize; 3], dev: &Device) -> Result<Vec<(String, Var)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (name, (ws, bs)) in names().iter().zip(shapes(channels)) {
        let fan_in: usize = ws[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut u = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        let w = Tensor::from_vec(u(ws.iter().product()), ws.as_slice(), dev)?;
        let b = Tensor::from_vec(u(bs), bs, dev)?;
        out.push((format!("{name}.weight"), Var::from_tensor(&w)?));
        out.push((format!("{name}.bias"), Var::from_tensor(&b)?));
    }
    Ok(out)
}

/// A 28×28 u8 image translated by (dy, dx) pixels, background (0) shifted in.
fn shifted(img: &[u8], dy: i64, dx: i64) -> impl Iterator<Item = u8> + '_ {
    let n = INPUT_SIZE as i64;
    (0..n * n).map(move |p| {
        let (y, x) = (p / n - dy, p % n - dx);
        if (0..n).contains(&y) && (0..n).contains(&x) {
            img[(y * n + x) as usize]
        } else {
            0
        }
    })
}

/// Linear warm-up to `learning_rate`, then cosine decay to zero.
fn lr_at(opts: &TrainOptions, step: usize, total: usize) -> f64 {
    let warm = ((total as f64 * opts.warmup_fraction) as usize).max(1);
    if step < warm {
        return opts.learning_rate * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (total - warm).max(1) as f64;
    opts.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

/// Progress of training: steps done, steps in all, last loss.
pub struct TrainProgress {
    pub step: usize,
    pub total: usize,
    pub loss: f32,
}

/// Trains the classifier; returns the safetensors bytes and the record (accuracies measured on
/// `test`).
pub fn train(
    train_set: &dyn Dataset,
    test_set: &dyn Dataset,
    limit: Option<usize>,
    opts: &TrainOptions,
    command: &str,
    on_progress: &mut dyn FnMut(TrainProgress),
) -> Result<(Vec<u8>, ClassifierRecord)> {
    let dev = Device::Cpu;
    let start = std::time::Instant::now();
    let tr = load_split(train_set, limit.unwrap_or(usize::MAX))?;
    let te = load_split(test_set, usize::MAX)?;
    let vars = init(opts.seed, opts.channels, &dev)?;
    let map: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let net = MnistClassifier::from_map(&map, String::new())?;
    let mut adam = candle_nn::AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        candle_nn::ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;
    let n = tr.labels.len();
    let px = INPUT_SIZE * INPUT_SIZE;
    let steps_per_epoch = n / opts.batch_size;
    let total = steps_per_epoch * opts.epochs;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut step = 0;
    for _ in 0..opts.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        for b in 0..steps_per_epoch {
            let idx = &order[b * opts.batch_size..(b + 1) * opts.batch_size];
            let mut pixels = Vec::with_capacity(idx.len() * px);
            for &i in idx {
                let src = if rng.random::<f64>() < opts.degrade_prob {
                    &tr.degraded
                } else {
                    &tr.clean
                };
                let s = opts.max_shift as i64;
                let (dy, dx) = (rng.random_range(-s..=s), rng.random_range(-s..=s));
                pixels.extend(shifted(&src[i * px..(i + 1) * px], dy, dx));
            }
            let labels: Vec<u32> = idx.iter().map(|&i| tr.labels[i]).collect();
            let x = to_input(&pixels, idx.len(), &dev)?;
            let y = Tensor::from_vec(labels, idx.len(), &dev)?;
            adam.set_learning_rate(lr_at(opts, step, total));
            let mask = if opts.dropout > 0.0 {
                let keep = 1.0 - opts.dropout;
                let m: Vec<f32> = (0..idx.len() * FEATURE_DIM)
                    .map(|_| {
                        if rng.random::<f64>() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Some(Tensor::from_vec(m, (idx.len(), FEATURE_DIM), &dev)?)
            } else {
                None
            };
            let (_, logits) = net.forward_with_mask(&x, mask.as_ref())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            adam.backward_step(&loss)?;
            step += 1;
            on_progress(TrainProgress {
                step,
                total,
                loss: loss.to_scalar::<f32>()?,
            });
        }
    }
    let feature_scale = unit_scale(&net, &tr.clean, tr.labels.len(), &dev)?;
    let test_accuracy = accuracy(&net, &te.clean, &te.labels, &dev)?;
    let test_accuracy_16px = accuracy(&net, &te.degraded, &te.labels, &dev)?;
    let tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let bytes = diffuse_models::weights::serialize_tensors(tensors)
        .map_err(|e| Error::File(e.to_string()))?;
    let [a, b, c] = opts.channels;
    let record = ClassifierRecord {
        architecture: format!(
            "conv3x3({a})-relu-maxpool2, conv3x3({b})-relu-maxpool2, conv3x3({c})-relu-maxpool2, \
             fc({FEATURE_DIM}) [features, before the relu]-relu, fc({NUM_CLASSES})"
        ),
        input: "1x28x28, x/127.5 - 1; other sizes resized bilinearly to 28".into(),
        feature_dim: FEATURE_DIM,
        epochs: opts.epochs,
        batch_size: opts.batch_size,
        learning_rate: opts.learning_rate,
        seed: opts.seed,
        degrade_prob: opts.degrade_prob,
        max_shift: opts.max_shift,
        dropout: opts.dropout,
        weight_decay: opts.weight_decay,
        feature_scale,
        test_accuracy,
        test_accuracy_16px,
        train_seconds: start.elapsed().as_secs_f64(),
        command: command.into(),
    };
    Ok((bytes, record))
}

/// Per image: features, class probabilities, predicted class.
pub type Classified = (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<u32>);

/// Per-image (features, class probabilities, predicted class) of an image source.
pub fn classify(
    net: &MnistClassifier,
    images: &dyn ImageSource,
    batch_size: usize,
    device: &Device,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Classified> {
    let (mut feats, mut probs, mut preds) = (Vec::new(), Vec::new(), Vec::new());
    for s in (0..images.len()).step_by(batch_size) {
        let n = batch_size.min(images.len() - s);
        let x = prepare(&images.batch(s, n)?, device)?;
        let (f, logits) = net.forward(&x)?;
        feats.extend(f.to_vec2::<f32>()?);
        probs.extend(candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?);
        preds.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        on_progress(s + n, images.len());
    }
    Ok((feats, probs, preds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_pixels_and_fills_background() {
        let mut img = vec![0u8; INPUT_SIZE * INPUT_SIZE];
        img[5 * INPUT_SIZE + 7] = 200;
        img[0] = 9;
        let out: Vec<u8> = shifted(&img, 2, -3).collect();
        assert_eq!(out[7 * INPUT_SIZE + 4], 200);
        assert_eq!(
            out.iter().filter(|&&v| v != 0).count(),
            1,
            "pixel (0,0) left the frame"
        );
        let same: Vec<u8> = shifted(&img, 0, 0).collect();
        assert_eq!(same, img);
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let opts = TrainOptions {
            learning_rate: 1.0,
            warmup_fraction: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&opts, 0, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(&opts, 9, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&opts, 10, 100) - 1.0).abs() < 1e-12);
        assert!(lr_at(&opts, 55, 100) < 0.6 && lr_at(&opts, 55, 100) > 0.4);
        assert!(lr_at(&opts, 99, 100) < 1e-3);
    }
}

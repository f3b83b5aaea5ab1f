//! ResNet block and resampling layers, diffusers `models/resnet.py`, `downsampling.py`,
//! `upsampling.py` (candle's `stable_diffusion/resnet.rs` is the same shape).

use crate::ops;
use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

fn conv3(
    cin: usize,
    cout: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<candle_nn::Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(cin, cout, 3, cfg, vb)
}

/// How the time embedding modulates a ResNet block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeNorm {
    /// h = norm2(h + proj(t)).
    Default,
    /// h = norm2(h)·(1 + scale) + shift (FiLM; "scale_shift").
    ScaleShift,
}

/// Resampling inside a ResNet block (`up=True` / `down=True`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    /// Nearest 2× upsampling of both paths.
    Up,
    /// 2×2 average pooling of both paths.
    Down,
}

/// Settings shared by every ResNet block of a UNet.
#[derive(Debug, Clone, Copy)]
pub struct ResnetOptions {
    pub groups: usize,
    pub eps: f64,
    pub temb_channels: Option<usize>,
    pub time_norm: TimeNorm,
    pub output_scale_factor: f64,
}

/// `ResnetBlock2D`: GN→SiLU→conv→(+t)→GN→SiLU→conv, plus a 1×1 shortcut when widths differ.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    pub(crate) norm1: ops::GroupNorm,
    pub(crate) conv1: candle_nn::Conv2d,
    pub(crate) time_emb_proj: Option<candle_nn::Linear>,
    pub(crate) norm2: ops::GroupNorm,
    pub(crate) conv2: candle_nn::Conv2d,
    pub(crate) conv_shortcut: Option<candle_nn::Conv2d>,
    pub(crate) resample: Resample,
    pub(crate) opts: ResnetOptions,
}

impl ResnetBlock2D {
    pub fn new(
        cin: usize,
        cout: usize,
        opts: ResnetOptions,
        resample: Resample,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::with_inner(cin, cout, cout, opts, resample, vb)
    }

    /// A block whose inner width (conv1's outputs, norm2, the time projection, conv2's inputs)
    /// is `inner` instead of `cout`: a pruned block (`crate::prune`; diffusers' is `cout`).
    pub fn with_inner(
        cin: usize,
        inner: usize,
        cout: usize,
        opts: ResnetOptions,
        resample: Resample,
        vb: VarBuilder,
    ) -> Result<Self> {
        let norm1 = ops::GroupNorm::new(opts.groups, cin, opts.eps, vb.pp("norm1"))?;
        let conv1 = conv3(cin, inner, 1, 1, vb.pp("conv1"))?;
        let time_emb_proj = match opts.temb_channels {
            Some(t) => {
                let width = match opts.time_norm {
                    TimeNorm::Default => inner,
                    TimeNorm::ScaleShift => 2 * inner,
                };
                Some(candle_nn::linear(t, width, vb.pp("time_emb_proj"))?)
            }
            None => None,
        };
        let norm2 = ops::GroupNorm::new(opts.groups, inner, opts.eps, vb.pp("norm2"))?;
        let conv2 = conv3(inner, cout, 1, 1, vb.pp("conv2"))?;
        let conv_shortcut = if cin != cout {
            Some(candle_nn::conv2d(
                cin,
                cout,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(ResnetBlock2D {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            resample,
            opts,
        })
    }

    /// `x`: [b, c, h, w]; `temb`: [b, temb_channels] (already the UNet's embedding).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = ops::group_norm(x, &self.norm1, true)?;
        let mut x = x.clone();
        match self.resample {
            Resample::Up => {
                x = ops::upsample_nearest2x(&x)?;
                h = ops::upsample_nearest2x(&h)?;
            }
            Resample::Down => {
                x = x.avg_pool2d(2)?;
                h = h.avg_pool2d(2)?;
            }
            Resample::None => {}
        }
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => Some(ops::linear(&t.silu()?, proj)?), // [b, c']
            _ => None,
        };
        h = match (self.opts.time_norm, t) {
            (TimeNorm::Default, Some(t)) => {
                let h = ops::conv2d_shifted(&h, &self.conv1, &t)?;
                ops::group_norm(&h, &self.norm2, true)?
            }
            (TimeNorm::ScaleShift, Some(t)) => {
                let h = ops::conv2d(&h, &self.conv1)?;
                let t = t.unsqueeze(2)?.unsqueeze(3)?; // [b, 2c', 1, 1]
                let c = t.dim(1)? / 2;
                let (scale, shift) = (t.narrow(1, 0, c)?, t.narrow(1, c, c)?);
                let n = ops::group_norm(&h, &self.norm2, false)?;
                n.broadcast_mul(&(scale + 1.0)?)?
                    .broadcast_add(&shift)?
                    .silu()?
            }
            (_, None) => ops::group_norm(&ops::conv2d(&h, &self.conv1)?, &self.norm2, true)?,
        };
        h = ops::conv2d(&h, &self.conv2)?;
        let x = match &self.conv_shortcut {
            Some(c) => ops::conv2d(&x, c)?,
            None => x,
        };
        let out = (x + h)?;
        if self.opts.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.opts.output_scale_factor
        }
    }
}

/// `Downsample2D(use_conv=True, name="op")`: a stride-2 3×3 conv; with padding 0 the input is
/// first padded by one on the right and bottom.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    pub(crate) conv: candle_nn::Conv2d,
    pub(crate) padding: usize,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Downsample2D {
            conv: conv3(channels, channels, 2, padding, vb.pp("conv"))?,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            ops::conv2d(&x, &self.conv)
        } else {
            ops::conv2d(x, &self.conv)
        }
    }
}

/// `Upsample2D(use_conv=True)`: nearest 2× then a 3×3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    pub(crate) conv: candle_nn::Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Upsample2D {
            conv: conv3(channels, channels, 1, 1, vb.pp("conv"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(&ops::upsample_nearest2x(x)?, &self.conv)
    }

    /// Nearest upsampling to `(h, w)` (torch's `F.interpolate(size=…)`, floor indexing), then
    /// the conv: what `UNet2DConditionModel` does when the input is not a multiple of its
    /// overall downscale, so each up block meets its skip states at their size.
    pub fn forward_to(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (_, _, xh, xw) = x.dims4()?;
        if (h, w) == (2 * xh, 2 * xw) {
            return self.forward(x);
        }
        ops::conv2d(&x.upsample_nearest2d(h, w)?, &self.conv)
    }
}

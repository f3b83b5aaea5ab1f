//! One optimizer step, as diffusers' training scripts take it under accelerate: the losses of
//! `K` micro-batches (gradient accumulation), backward, the data-parallel average of losses and
//! gradients, global-norm clipping, the fp16 loss scaler and the AdamW update. [`step`] is what
//! the training loop and the benchmark harness call.

use crate::amp::GradScaler;
use crate::dist::Collective;
use crate::optim::{clip_grad_norm, AdamW};
use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

/// The settings of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOptions {
    /// This step's learning rate (the schedule's value).
    pub lr: f64,
    /// Gradients are clipped to this global L2 norm.
    pub max_grad_norm: f64,
    /// Micro-batches per step, their gradients averaged (`train.gradient_accumulation_steps`;
    /// 0 counts as 1).
    pub accumulation: u64,
}

/// The loss of one micro-batch and named values to report with it.
pub struct MicroLoss {
    /// A scalar; any dtype (it is read as f32).
    pub loss: Tensor,
    /// Averaged over the micro-batches (and ranks) into [`StepResult::parts`].
    pub parts: Vec<(String, f64)>,
}

impl MicroLoss {
    /// A loss without named parts.
    pub fn new(loss: Tensor) -> Self {
        MicroLoss {
            loss,
            parts: Vec::new(),
        }
    }
}

/// Why a step left the weights as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// A micro-batch's loss (on some rank) was inf or NaN.
    NonFiniteLoss,
    /// The gradient norm was inf or NaN (e.g. an fp16 overflow).
    NonFiniteGradient,
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// The mean loss over the micro-batches (and ranks).
    pub loss: f32,
    /// The global gradient norm before clipping; NaN when the loss was not finite.
    pub grad_norm: f64,
    /// The micro-batches' named parts, averaged; then `loss_scale` under fp16.
    pub parts: Vec<(String, f64)>,
    /// `Some` when no update was made.
    pub skipped: Option<Skipped>,
}

/// One optimizer step of `vars`: calls `micro_loss` `options.accumulation` times (each call
/// draws its batch and runs the forward), backpropagates each finite loss scaled by
/// 1/accumulation (and by the fp16 `scaler`), averages losses and gradients over `comm`'s ranks,
/// clips the global norm to `options.max_grad_norm` and applies AdamW at `options.lr`. A
/// non-finite loss or gradient norm skips the update (and halves the scaler's scale). The EMA
/// and the LR schedule are the caller's.
pub fn step(
    vars: &[(String, Var)],
    opt: &mut AdamW,
    options: &StepOptions,
    mut scaler: Option<&mut GradScaler>,
    comm: &dyn Collective,
    micro_loss: &mut dyn FnMut() -> Result<MicroLoss>,
) -> Result<StepResult> {
    let world = comm.world_size();
    // Data parallel: collectives each step (`--gpus 1` runs them too, on one rank).
    let sync = !comm.is_noop();
    let k_acc = options.accumulation.max(1);
    let mut loss_sum = 0f32;
    let mut grads: Option<GradStore> = None;
    let mut finite = true;
    // Named loss parts, averaged over the micro-batches.
    let mut parts_sum: Vec<(String, f64)> = Vec::new();
    for _ in 0..k_acc {
        let MicroLoss {
            loss: micro_loss,
            parts,
        } = micro_loss()?;
        for (k, v) in parts {
            match parts_sum.iter_mut().find(|(n, _)| *n == k) {
                Some((_, s)) => *s += v / k_acc as f64,
                None => parts_sum.push((k, v / k_acc as f64)),
            }
        }
        let micro = micro_loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        loss_sum += micro;
        if !micro.is_finite() {
            finite = false;
            continue;
        }
        let g = match &scaler {
            Some(s) => (micro_loss * (s.scale() / k_acc as f64))?,
            None => (micro_loss / k_acc as f64)?,
        }
        .backward()?;
        grads = Some(match grads {
            None => g,
            Some(acc) => accumulate(acc, &g, vars)?,
        });
    }
    // Data parallel: one small all-reduce agrees on the loss, its parts and whether every
    // rank was finite; then the gradients are averaged.
    if sync {
        let mut ctl = vec![loss_sum, if finite { 0.0 } else { 1.0 }];
        ctl.extend(parts_sum.iter().map(|(_, v)| *v as f32));
        let ctl = agree(comm, ctl)?;
        loss_sum = ctl[0] / world as f32;
        finite = ctl[1] == 0.0;
        for ((_, v), c) in parts_sum.iter_mut().zip(&ctl[2..]) {
            *v = *c as f64 / world as f64;
        }
    }
    let unscale = scaler.as_ref().map_or(1.0, |s| s.scale()) * world as f64;
    if let (true, Some(g)) = (finite && (sync || unscale != 1.0), grads.as_mut()) {
        average_gradients(g, vars, comm, unscale)?;
    }
    let mut result = StepResult {
        loss: loss_sum / k_acc as f32,
        grad_norm: f64::NAN,
        parts: parts_sum,
        skipped: None,
    };
    let Some(mut grads) = grads.filter(|_| finite) else {
        if let Some(s) = scaler.as_mut() {
            s.update(true);
        }
        result.skipped = Some(Skipped::NonFiniteLoss);
        return Ok(result);
    };
    result.grad_norm = clip_grad_norm(&mut grads, vars, options.max_grad_norm)?;
    if let Some(s) = scaler.as_mut() {
        // fp16: an overflow halves the loss scale and skips the step (GradScaler).
        s.update(!result.grad_norm.is_finite());
        result.parts.push(("loss_scale".into(), s.scale()));
    }
    if !result.grad_norm.is_finite() {
        result.skipped = Some(Skipped::NonFiniteGradient);
        return Ok(result);
    }
    opt.update(&grads, options.lr)?;
    Ok(result)
}

/// `acc` plus the detached gradients of `vars` in `g` (gradient accumulation).
fn accumulate(mut acc: GradStore, g: &GradStore, vars: &[(String, Var)]) -> Result<GradStore> {
    for (_, v) in vars {
        if let Some(new) = g.get(v) {
            let sum = match acc.get(v) {
                Some(old) => (old.detach() + new.detach())?,
                None => new.detach(),
            };
            acc.insert(v, sum);
        }
    }
    Ok(acc)
}

/// Data parallel: the elementwise sum of `values` over the ranks (host values; the NCCL group
/// sends them over its TCP links).
pub(super) fn agree(comm: &dyn Collective, values: Vec<f32>) -> Result<Vec<f32>> {
    let mut t = [Tensor::new(values.as_slice(), &Device::Cpu)?];
    comm.all_reduce_sum(&mut t)?;
    Ok(t[0].to_vec1()?)
}

/// Data parallel and fp16: the gradients of `vars` summed over the ranks and divided by `div`
/// (world size × loss scale). A variable keeps no gradient only if no rank has one.
fn average_gradients(
    grads: &mut GradStore,
    vars: &[(String, Var)],
    comm: &dyn Collective,
    div: f64,
) -> Result<()> {
    let mut ts = Vec::with_capacity(vars.len() + 1);
    let mut present = Vec::with_capacity(vars.len());
    for (_, v) in vars {
        match grads.get(v) {
            Some(g) => {
                ts.push(g.detach());
                present.push(1f32);
            }
            None => {
                ts.push(Tensor::zeros(v.shape(), DType::F32, v.device())?);
                present.push(0f32);
            }
        }
    }
    let device = vars
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    ts.push(Tensor::new(present.as_slice(), &device)?);
    comm.all_reduce_sum(&mut ts)?;
    let present: Vec<f32> = ts
        .pop()
        .expect("flags")
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    for (((_, v), g), p) in vars.iter().zip(ts).zip(present) {
        if p > 0.0 {
            grads.insert(v, (g / div)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::SingleProcess;
    use crate::optim::AdamWConfig;

    /// w = [1, 2, 3], loss = mean((w·x − y)²) over a fixed batch.
    fn setup() -> (Vec<(String, Var)>, AdamW, Tensor, Tensor) {
        let w = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let vars = vec![("w".to_string(), w)];
        let opt = AdamW::new(vars.clone(), AdamWConfig::default()).unwrap();
        let x = Tensor::new(&[[1f32, 0.5, -1.0], [2.0, -1.0, 0.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0.5f32, -2.0], &Device::Cpu).unwrap();
        (vars, opt, x, y)
    }

    fn loss(vars: &[(String, Var)], x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let pred = x.broadcast_mul(vars[0].1.as_tensor())?.sum(1)?;
        Ok((pred - y)?.sqr()?.mean_all()?)
    }

    fn weights(vars: &[(String, Var)]) -> Vec<f32> {
        vars[0].1.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn step_is_forward_backward_clip_adamw() {
        let options = StepOptions {
            lr: 0.1,
            max_grad_norm: 0.5,
            accumulation: 1,
        };
        let (vars, mut opt, x, y) = setup();
        let r = step(&vars, &mut opt, &options, None, &SingleProcess, &mut || {
            Ok(MicroLoss::new(loss(&vars, &x, &y)?))
        })
        .unwrap();
        assert_eq!(r.skipped, None);
        let (by_hand, mut opt2, ..) = setup();
        let l = loss(&by_hand, &x, &y).unwrap();
        assert_eq!(r.loss, l.to_scalar::<f32>().unwrap());
        let mut g = l.backward().unwrap();
        let norm = clip_grad_norm(&mut g, &by_hand, 0.5).unwrap();
        assert_eq!(r.grad_norm, norm);
        assert!(norm > 0.5, "the test should clip");
        opt2.update(&g, 0.1).unwrap();
        assert_eq!(weights(&vars), weights(&by_hand));

        // Two identical micro-batches average to the same update.
        let (acc, mut opt3, ..) = setup();
        let two = StepOptions {
            accumulation: 2,
            ..options
        };
        let r2 = step(&acc, &mut opt3, &two, None, &SingleProcess, &mut || {
            Ok(MicroLoss::new(loss(&acc, &x, &y)?))
        })
        .unwrap();
        assert_eq!(r2.loss, r.loss);
        assert!((r2.grad_norm - r.grad_norm).abs() < 1e-6);
        let (a, b) = (weights(&acc), weights(&vars));
        assert!(
            a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-6),
            "{a:?} vs {b:?}"
        );
    }

    #[test]
    fn non_finite_loss_skips_the_update() {
        let (vars, mut opt, x, _) = setup();
        let y = Tensor::new(&[f32::NAN, 0.0], &Device::Cpu).unwrap();
        let options = StepOptions {
            lr: 0.1,
            max_grad_norm: 1.0,
            accumulation: 1,
        };
        let mut scaler = GradScaler::default();
        let before = scaler.scale();
        let r = step(
            &vars,
            &mut opt,
            &options,
            Some(&mut scaler),
            &SingleProcess,
            &mut || Ok(MicroLoss::new(loss(&vars, &x, &y)?)),
        )
        .unwrap();
        assert_eq!(r.skipped, Some(Skipped::NonFiniteLoss));
        assert!(r.grad_norm.is_nan());
        assert_eq!(weights(&vars), vec![1.0, 2.0, 3.0]);
        assert_eq!(scaler.scale(), before / 2.0);
    }
}

//! Gradient checkpointing: a block keeps only its inputs for backward and recomputes its
//! activations there (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost";
//! `torch.utils.checkpoint`; diffusers' `_gradient_checkpointing_func`, which models turn on with
//! `enable_gradient_checkpointing()`).
//!
//! candle 0.11.1 has neither checkpointing nor a no-grad mode. [`checkpoint`] builds it from a
//! `CustomOp2`:
//! - forward: the block runs on detached inputs, so its graph reaches only the model's `Var`s;
//!   those are read off it (`sorted_nodes`), then the graph and every intermediate are dropped;
//! - the output enters the graph as `CustomOp2(x, packed)`, `packed` being the concatenation of
//!   the flattened extra input (time embedding, DiT conditioning) and of those `Var`s. candle's
//!   own `cat` backward hands each `Var` its slice of the op's second gradient, so parameter
//!   gradients land in the `GradStore` under the usual ids: clipping, AdamW, EMA, accumulation
//!   and checkpoints see no difference;
//! - backward: the block reruns with graph on fresh `Var`s holding x and extra (the same ops,
//!   our CPU kernels included), backprops sum(out · grad_out) and returns
//!   (dx, cat(d_extra, d_params)).
//!
//! As with torch's checkpoint, weights must not change between forward and backward.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage,
    Tensor, Var,
};
use std::sync::Mutex;

/// A block's forward: (inputs, extra) → output.
type BlockFn = dyn Fn(&[Tensor], Option<&Tensor>) -> Result<Tensor> + Send + Sync;

/// `f(x, extra)` with its activations recomputed in backward instead of kept (see the module
/// docs). Same values and gradients as calling `f` directly. Where nothing tracks a gradient
/// (inference weights and inputs), this is just `f(x, extra)`.
pub fn checkpoint<F>(x: &Tensor, extra: Option<&Tensor>, f: F) -> Result<Tensor>
where
    F: Fn(&Tensor, Option<&Tensor>) -> Result<Tensor> + Send + Sync + 'static,
{
    run(&[x], extra, Box::new(move |xs, e| f(&xs[0], e)))
}

/// [`checkpoint`] of a block with two large inputs, both kept by reference: a ResNet over
/// `cat(h, skip)` then keeps neither the concatenation nor a copy.
pub fn checkpoint2<F>(x: &Tensor, y: &Tensor, extra: Option<&Tensor>, f: F) -> Result<Tensor>
where
    F: Fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor> + Send + Sync + 'static,
{
    run(&[x, y], extra, Box::new(move |xs, e| f(&xs[0], &xs[1], e)))
}

fn run(inputs: &[&Tensor], extra: Option<&Tensor>, f: Box<BlockFn>) -> Result<Tensor> {
    let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let extra_d = extra.map(Tensor::detach);
    let out = f(&detached, extra_d.as_ref())?;
    let params: Vec<Tensor> = out
        .sorted_nodes()
        .into_iter()
        .filter(|n| n.is_variable())
        .cloned()
        .collect();
    let inputs_track = inputs.iter().any(|t| t.track_op()) || extra.is_some_and(Tensor::track_op);
    if params.is_empty() && !inputs_track {
        return Ok(out);
    }
    // Frees the block's graph and intermediates; the op keeps the output until it is applied.
    let out_d = out.detach();
    drop(out);
    let mut pieces = Vec::with_capacity(params.len() + 1);
    if let Some(e) = extra {
        pieces.push(flat(e)?);
    }
    for p in &params {
        pieces.push(flat(p)?);
    }
    let packed = pack(pieces, inputs[0])?;
    let op = Checkpoint {
        f,
        params,
        extra: extra_d,
        out: Mutex::new(Some(out_d)),
    };
    match inputs {
        [x] => x.apply_op2(&packed, op),
        [x, y] => x.apply_op3(y, &packed, op),
        _ => bail!("gradient checkpoint: one or two inputs"),
    }
}

fn flat(t: &Tensor) -> Result<Tensor> {
    t.flatten_all()?.to_dtype(DType::F32)
}

/// One f32 vector of the pieces (a single zero when there are none).
fn pack(pieces: Vec<Tensor>, like: &Tensor) -> Result<Tensor> {
    match pieces.len() {
        0 => Tensor::zeros(1, DType::F32, like.device()),
        1 => Ok(pieces.into_iter().next().expect("one piece")),
        _ => Tensor::cat(&pieces, 0),
    }
}

struct Checkpoint {
    f: Box<BlockFn>,
    /// The `Var`s the block reads, in the order of `packed`.
    params: Vec<Tensor>,
    /// The extra input, detached.
    extra: Option<Tensor>,
    /// The output computed in `run`, handed over by the op's forward.
    out: Mutex<Option<Tensor>>,
}

impl Checkpoint {
    /// A fresh copy of the precomputed output's storage on the backend `pick` selects.
    fn output<S>(&self, pick: impl Fn(&Storage) -> Option<&S>) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let out = self.out.lock().expect("checkpoint lock").take();
        let Some(out) = out else {
            bail!("gradient checkpoint: the op's forward ran twice")
        };
        let (storage, layout) = out.storage_and_layout();
        let Some(s) = pick(&storage) else {
            bail!("gradient checkpoint: output on an unexpected device")
        };
        // SAFETY: every element is written by copy_strided_src below.
        let mut dst = unsafe { s.device().alloc_uninit(layout.shape(), s.dtype())? };
        s.copy_strided_src(&mut dst, 0, layout)?;
        Ok((dst, layout.shape().clone()))
    }

    fn cpu(s: &Storage) -> Option<&CpuStorage> {
        match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        }
    }

    fn cuda(s: &Storage) -> Option<&CudaStorage> {
        match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        }
    }

    /// Recomputes the block with graph (inputs and extra as fresh variables, the weights as
    /// they are) and backprops `grad`: the inputs' gradients, and the packed vector's.
    fn backward(&self, inputs: &[&Tensor], grad: &Tensor) -> Result<(Vec<Option<Tensor>>, Tensor)> {
        let vars: Vec<Option<Var>> = inputs
            .iter()
            .map(|t| {
                t.track_op()
                    .then(|| Var::from_tensor(&t.detach()))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let xs: Vec<Tensor> = inputs
            .iter()
            .zip(&vars)
            .map(|(t, v)| match v {
                Some(v) => v.as_tensor().clone(),
                None => t.detach(),
            })
            .collect();
        let ev = self.extra.as_ref().map(Var::from_tensor).transpose()?;
        let out = (self.f)(&xs, ev.as_ref().map(|v| v.as_tensor()))?;
        let grads = out.mul(&grad.detach())?.sum_all()?.backward()?;
        let grad_of = |t: &Tensor| -> Result<Tensor> {
            match grads.get(t) {
                Some(g) => Ok(g.detach()),
                None => t.zeros_like(),
            }
        };
        let d_inputs = vars
            .iter()
            .map(|v| v.as_ref().map(|v| grad_of(v)).transpose())
            .collect::<Result<_>>()?;
        let mut pieces = Vec::with_capacity(self.params.len() + 1);
        if let Some(v) = &ev {
            pieces.push(flat(&grad_of(v)?)?);
        }
        for p in &self.params {
            pieces.push(flat(&grad_of(p)?)?);
        }
        Ok((d_inputs, pack(pieces, inputs[0])?))
    }
}

impl CustomOp2 for Checkpoint {
    fn name(&self) -> &'static str {
        "gradient-checkpoint"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.output(Self::cpu)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.output(Self::cuda)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (mut d, dp) = self.backward(&[x], grad)?;
        Ok((d.remove(0), Some(dp)))
    }
}

impl CustomOp3 for Checkpoint {
    fn name(&self) -> &'static str {
        "gradient-checkpoint"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.output(Self::cpu)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.output(Self::cuda)
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (mut d, dp) = self.backward(&[x, y], grad)?;
        let dy = d.pop().flatten();
        Ok((d.pop().flatten(), dy, Some(dp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::rand_tensor;
    use candle_core::Device;

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let m: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        d / m.max(1e-12)
    }

    /// tanh(x·W + e) · v: weights read by the block, an extra input, and x used twice.
    fn block(w: Tensor, v: Tensor) -> impl Fn(&Tensor, Option<&Tensor>) -> Result<Tensor> {
        move |x: &Tensor, e: Option<&Tensor>| {
            let h = x.matmul(&w)?.broadcast_add(e.expect("extra"))?.tanh()?;
            (h.broadcast_mul(&v)? + x)?.sqr()
        }
    }

    #[test]
    fn same_values_and_gradients_as_the_plain_block() {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 0.5, (6, 6), &dev).unwrap();
        let v = Var::randn(0f32, 1.0, 6, &dev).unwrap();
        let a = Var::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let e = Var::randn(0f32, 1.0, 6, &dev).unwrap();
        let f = block(w.as_tensor().clone(), v.as_tensor().clone());
        // x and the extra input come from the graph, as between the blocks of a model.
        let x = a.as_tensor().exp().unwrap();
        let extra = (e.as_tensor() * 2.0).unwrap();
        let plain = f(&x, Some(&extra)).unwrap();
        let ck = checkpoint(&x, Some(&extra), f).unwrap();
        assert_eq!(max_rel(&plain, &ck), 0.0);
        let g1 = plain.sum_all().unwrap().backward().unwrap();
        let g2 = ck.sum_all().unwrap().backward().unwrap();
        for var in [&w, &v, &a, &e] {
            let (p, c) = (g1.get(var).unwrap(), g2.get(var).unwrap());
            assert!(max_rel(p, c) < 1e-6, "{}", max_rel(p, c));
        }
    }

    /// Loss and gradient of every variable of `varmap` for the plain and the checkpointed
    /// forward of the same model. Each gradient's difference is taken relative to its largest
    /// entry, floored at 1e-4 of the model's largest gradient: a gradient that is exactly zero
    /// in exact arithmetic (attention's key bias: softmax ignores a per-query constant) is
    /// rounding noise (~1e-12) in both runs.
    fn compare(
        what: &str,
        varmap: &candle_nn::VarMap,
        expect_kernels: bool,
        forward: impl Fn(bool) -> Tensor,
    ) {
        let kernel_calls = || crate::kernels::FORWARD_CALLS.with(|c| c.get());
        let loss_plain = forward(false).sqr().unwrap().mean_all().unwrap();
        let loss_ck = forward(true).sqr().unwrap().mean_all().unwrap();
        let (lp, lc) = (
            loss_plain.to_scalar::<f32>().unwrap(),
            loss_ck.to_scalar::<f32>().unwrap(),
        );
        assert_eq!(lp, lc, "{what}: the loss must not change");
        let before = kernel_calls();
        let g_plain = loss_plain.backward().unwrap();
        let plain_calls = kernel_calls() - before;
        let g_ck = loss_ck.backward().unwrap();
        let recompute_calls = kernel_calls() - before - plain_calls;
        assert_eq!(plain_calls, 0, "{what}: a plain backward runs no forward");
        if expect_kernels && crate::kernels::enabled() {
            assert!(
                recompute_calls > 0,
                "{what}: the recomputation must run our CPU kernels"
            );
        }
        let amax = |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
        let data = varmap.data().lock().unwrap();
        let mut pairs = Vec::new();
        for (name, var) in data.iter() {
            match (g_plain.get(var), g_ck.get(var)) {
                (None, None) => {}
                (Some(p), Some(c)) => pairs.push((name, p, c)),
                (p, c) => panic!(
                    "{what}: {name}: gradient plain {} / checkpointed {}",
                    p.is_some(),
                    c.is_some()
                ),
            }
        }
        assert!(!pairs.is_empty());
        let global = pairs.iter().map(|(_, p, _)| amax(p)).fold(0f32, f32::max);
        let (mut worst, mut worst_name) = (0f32, "all bit-identical");
        let mut worst_unfloored = 0f32;
        for (name, p, c) in &pairs {
            let (d, m) = (amax(&(*p - *c).unwrap()), amax(p));
            let r = d / m.max(1e-4 * global);
            assert!(r < 1e-5, "{what}: {name}: relative difference {r}");
            if r > worst {
                (worst, worst_name) = (r, name.as_str());
            }
            if m >= 1e-4 * global {
                worst_unfloored = worst_unfloored.max(d / m);
            }
        }
        println!(
            "{what}: loss {lp} both ways; {} of {} variables with gradients, worst relative difference {worst:.2e} ({worst_name}), {worst_unfloored:.2e} among gradients above the floor; {recompute_calls} kernel forwards in the recomputation",
            pairs.len(),
            data.len()
        );
    }

    fn unet(json: serde_json::Value) -> (crate::UNet2DModel, candle_nn::VarMap) {
        let cfg = crate::UNet2DConfig::from_json_str(&json.to_string()).unwrap();
        let (m, varmap) = crate::weights::build_unet(&cfg, &Device::Cpu).unwrap();
        crate::weights::seeded_init(&varmap, 3).unwrap();
        (m, varmap)
    }

    /// A UNet with attention in down, mid and up blocks and a class table; and the ResNet
    /// resamplers, scale-shift time norm and other class embeddings of the parity fixtures.
    #[test]
    fn unet_gradients_equal_the_plain_ones() {
        let dev = Device::Cpu;
        let attn_classes = serde_json::json!({
            "sample_size": 16, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [16, 32, 32], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 8, "attention_head_dim": 8, "num_class_embeds": 11
        });
        let resnet_resample = serde_json::json!({
            "sample_size": 8, "in_channels": 3, "out_channels": 3,
            "block_out_channels": [16, 24], "layers_per_block": 1,
            "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D"],
            "norm_num_groups": 4, "resnet_time_scale_shift": "scale_shift",
            "downsample_padding": 0, "mid_block_scale_factor": 2.0,
            "class_embed_type": "timestep"
        });
        for (what, json, labels) in [
            ("unet attention + class table", attn_classes, true),
            (
                "unet resnet resamplers + scale_shift",
                resnet_resample,
                false,
            ),
        ] {
            let (model, varmap) = unet(json);
            let c = model.config().in_channels;
            let hw = model.config().sample_hw().unwrap();
            let x = rand_tensor(&[4, c, hw.0, hw.1], 1);
            let ts = [3f32, 250.0, 600.0, 999.0];
            let y = if labels {
                Tensor::new(&[0u32, 4, 9, 10], &dev).unwrap()
            } else {
                Tensor::new(&[1f32, 200.0, 5.0, 700.0], &dev).unwrap()
            };
            let mut ck = model.clone();
            ck.set_gradient_checkpointing(true);
            compare(what, &varmap, true, |on| {
                let m = if on { &ck } else { &model };
                m.forward(&x, &ts, Some(&y)).unwrap()
            });
        }
    }

    #[test]
    fn dit_gradients_equal_the_plain_ones() {
        let dev = Device::Cpu;
        let cfg = crate::DiTTransformer2DConfig::from_json_str(
            &serde_json::json!({
                "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4,
                "out_channels": 8, "num_layers": 3, "sample_size": 8, "patch_size": 2,
                "num_embeds_ada_norm": 10, "norm_elementwise_affine": true
            })
            .to_string(),
        )
        .unwrap();
        // PyTorch's layer init, not adaLN-Zero: every gate open, every weight with a gradient.
        let (model, varmap) =
            crate::weights::build::<crate::DiTTransformer2DModel>(&cfg, &dev).unwrap();
        crate::weights::seeded_init(&varmap, 4).unwrap();
        let x = rand_tensor(&[3, 4, 8, 8], 2);
        let y = Tensor::new(&[0u32, 7, 10], &dev).unwrap();
        let mut ck = model.clone();
        ck.set_gradient_checkpointing(true);
        // DiT blocks run candle ops only (LayerNorm, linear, softmax): no kernel to count.
        compare("dit", &varmap, false, |on| {
            let m = if on { &ck } else { &model };
            m.forward(&x, &[10.0, 500.0, 990.0], Some(&y)).unwrap()
        });
    }

    #[test]
    fn vae_gradients_equal_the_plain_ones() {
        let dev = Device::Cpu;
        let cfg = crate::AutoencoderKLConfig::from_json_str(
            &serde_json::json!({
                "in_channels": 3, "out_channels": 3, "latent_channels": 4,
                "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "sample_size": 16
            })
            .to_string(),
        )
        .unwrap();
        let (model, varmap) = crate::weights::build_vae(&cfg, &dev).unwrap();
        crate::weights::seeded_init(&varmap, 5).unwrap();
        let x = rand_tensor(&[2, 3, 16, 16], 3);
        let mut ck = model.clone();
        ck.set_gradient_checkpointing(true);
        compare("vae", &varmap, true, |on| {
            let m = if on { &ck } else { &model };
            let post = m.encode(&x).unwrap();
            m.decode(&post.mean).unwrap()
        });
    }

    #[test]
    fn two_inputs_same_values_and_gradients() {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 0.5, (6, 6), &dev).unwrap();
        let a = Var::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        let wt = w.as_tensor().clone();
        let f = move |x: &Tensor, y: &Tensor, _: Option<&Tensor>| {
            Tensor::cat(&[x, y], 1)?.matmul(&wt)?.tanh()
        };
        let (x, y) = (a.as_tensor().exp().unwrap(), (b.as_tensor() * 3.0).unwrap());
        let plain = f(&x, &y, None).unwrap();
        let ck = checkpoint2(&x, &y, None, f).unwrap();
        assert_eq!(max_rel(&plain, &ck), 0.0);
        let g1 = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = ck.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&w, &a, &b] {
            let (p, c) = (g1.get(var).unwrap(), g2.get(var).unwrap());
            assert!(max_rel(p, c) < 1e-6, "{}", max_rel(p, c));
        }
    }

    #[test]
    fn without_gradients_it_is_the_plain_forward() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (6, 6), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let e = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let y = checkpoint(&x, Some(&e), block(w, v)).unwrap();
        assert!(!y.track_op(), "no op may be recorded in inference");
    }
}

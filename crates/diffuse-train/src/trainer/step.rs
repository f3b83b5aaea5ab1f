//! Data-parallel reductions of one optimizer step: losses and gradients summed over the ranks.

use crate::dist::Collective;
use crate::Result;
use candle_core::{DType, Device, Tensor, Var};

/// Data parallel: the elementwise sum of `values` over the ranks (host values; the NCCL group
/// sends them over its TCP links).
pub(super) fn agree(comm: &dyn Collective, values: Vec<f32>) -> Result<Vec<f32>> {
    let mut t = [Tensor::new(values.as_slice(), &Device::Cpu)?];
    comm.all_reduce_sum(&mut t)?;
    Ok(t[0].to_vec1()?)
}

/// Data parallel and fp16: the gradients of `vars` summed over the ranks and divided by `div`
/// (world size × loss scale). A variable keeps no gradient only if no rank has one.
pub(super) fn average_gradients(
    grads: &mut candle_core::backprop::GradStore,
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

//! The NCCL [`Collective`] (the `cuda` feature): one process per GPU, as torch DDP's `nccl`
//! backend. Rank 0 makes NCCL's unique id and sends it over the TCP rendezvous
//! ([`TcpGroup`]); every rank then joins the NCCL communicator on its device's stream. Gradients
//! are summed on the device (one `ncclAllReduce` over all tensors packed into one buffer);
//! host tensors (the step's loss and flags), broadcasts and barriers go over TCP. Across nodes NCCL finds its own
//! transport (InfiniBand, or TCP sockets: `NCCL_SOCKET_IFNAME`, `NCCL_DEBUG=INFO` to see it).

use super::tcp::TcpGroup;
use super::Collective;
use crate::{Error, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CudaStorage, Device, Layout, Shape, Tensor};

pub struct NcclGroup {
    tcp: TcpGroup,
    comm: Comm,
}

fn nccl_err(
    what: &str,
) -> impl FnOnce(candle_core::cuda_backend::cudarc::nccl::result::NcclError) -> Error + '_ {
    move |e| Error::Invalid(format!("NCCL {what}: {e:?}"))
}

impl NcclGroup {
    /// Joins the NCCL communicator of the ranks of `tcp` on `device` (this process's GPU).
    pub fn new(tcp: TcpGroup, device: &Device) -> Result<Self> {
        let dev = device.as_cuda_device()?;
        let id = if tcp.rank() == 0 {
            Some(Id::new().map_err(nccl_err("unique id"))?)
        } else {
            None
        };
        let mine: Vec<u8> = match &id {
            Some(id) => id.internal().iter().map(|&c| c as u8).collect(),
            None => vec![],
        };
        let bytes = tcp.broadcast(&mine)?;
        let internal: [core::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as core::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| Error::Invalid("NCCL unique id: expected 128 bytes from rank 0".into()))?;
        let id = id.unwrap_or_else(|| Id::uninit(internal));
        let comm = Comm::from_rank(dev.cuda_stream(), tcp.rank(), tcp.world_size(), id)
            .map_err(nccl_err("communicator"))?;
        Ok(NcclGroup { tcp, comm })
    }
}

/// Sum over the ranks of one contiguous f32 tensor (a CustomOp: the only way to reach the
/// device buffer of a candle tensor).
struct AllReduce<'a> {
    comm: &'a Comm,
}

impl candle_core::CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL all-reduce of a CPU tensor (the NCCL group trains on CUDA)")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL all-reduce: the tensor is not contiguous")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        // Safety: every element is written by the all-reduce.
        let mut dst = unsafe { s.device.alloc::<f32>(end - start)? };
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, s.device.clone()),
            l.shape().clone(),
        ))
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }

    fn world_size(&self) -> usize {
        self.tcp.world_size()
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        // Host values (the trainer's loss and flags) go over the TCP links.
        if tensors.iter().all(|t| t.device().is_cpu()) {
            return self.tcp.all_reduce_sum(tensors);
        }
        let flat: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.to_dtype(candle_core::DType::F32)?.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        let packed = Tensor::cat(&flat, 0)?.contiguous()?;
        let summed = packed.apply_op1_no_bwd(&AllReduce { comm: &self.comm })?;
        let mut at = 0;
        for t in tensors.iter_mut() {
            let n = t.elem_count();
            *t = summed
                .narrow(0, at, n)?
                .reshape(t.shape())?
                .to_dtype(t.dtype())?;
            at += n;
        }
        Ok(())
    }

    fn broadcast(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.tcp.broadcast(bytes)
    }

    fn barrier(&self) -> Result<()> {
        self.tcp.barrier()
    }
}

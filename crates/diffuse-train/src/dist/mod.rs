//! Data-parallel training, after torch DistributedDataParallel and torchrun: N ranks each hold
//! the whole model, take a contiguous 1/N slice of every global batch, and average their
//! gradients with an all-reduce before clipping, so every rank makes the same AdamW update.
//! Ranks find each other through torchrun's environment variables (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; [`DistEnv`]).
//!
//! [`Collective`] is what the trainer needs of a process group; its backends:
//! [`launch`] starts the ranks of a node as torchrun does.
//!
//! - [`SingleProcess`]: world size 1 (plain training);
//! - [`threads::ThreadGroup`]: ranks as threads of one process (the CPU tests);
//! - [`tcp::TcpGroup`]: ranks as processes on the CPU, star all-reduce through rank 0 over TCP
//!   (gloo's role in torch); it is also the rendezvous that hands NCCL its unique id;
//! - `nccl::NcclGroup` (the `cuda` feature): one process per GPU, NCCL all-reduce on the
//!   device (cudarc's bindings), NCCL's unique id sent from rank 0 over the TCP rendezvous.
//!
//! All backends sum in a fixed order that is the same on every rank, so the ranks' weights stay
//! bit-identical.
//!
//! [`launch`] starts a node's ranks as copies of the current command, as torchrun does.

pub mod launch;
pub mod tcp;
pub mod threads;

#[cfg(feature = "cuda")]
pub mod nccl;

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// A process group: rank, size, and the collectives of a data-parallel step. Every rank must
/// make the same calls in the same order.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces every tensor by its elementwise sum over the ranks (f32; each rank gets the
    /// same values).
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Rank 0's `bytes`, returned on every rank (the others' argument is ignored).
    fn broadcast(&self, bytes: &[u8]) -> Result<Vec<u8>>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Whether the collectives are no-ops, so that the trainer may skip them (only
    /// [`SingleProcess`]; a real group of one, e.g. `--gpus 1`, runs them).
    fn is_noop(&self) -> bool {
        false
    }

    /// [`Self::all_reduce_sum`] divided by the world size.
    fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.all_reduce_sum(tensors)?;
        let n = self.world_size() as f64;
        if n != 1.0 {
            for t in tensors.iter_mut() {
                *t = (&*t / n)?;
            }
        }
        Ok(())
    }
}

/// The group of one: every collective is the identity.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn is_noop(&self) -> bool {
        true
    }
}

/// The rows `offset..offset + rows` of a global batch of `batch` rows that `rank` of `world`
/// takes (contiguous, equal slices: DDP with a DistributedSampler over the same global order).
pub fn shard_rows(batch: usize, rank: usize, world: usize) -> Result<(usize, usize)> {
    if world == 0 || rank >= world {
        return Err(Error::Invalid(format!("rank {rank} of a world of {world}")));
    }
    if !batch.is_multiple_of(world) {
        return Err(Error::Invalid(format!(
            "data.batch_size = {batch} does not split over {world} ranks: use a multiple of {world} (each rank takes batch_size / {world} rows of every global batch)"
        )));
    }
    let rows = batch / world;
    Ok((rank * rows, rows))
}

/// Host-side all-reduce helpers for the CPU backends: the tensors as one f32 vector and back.
pub(crate) fn flatten(tensors: &[Tensor]) -> Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(tensors.iter().map(|t| t.elem_count()).sum());
    for t in tensors {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        flat.extend(v);
    }
    Ok(flat)
}

pub(crate) fn unflatten(flat: &[f32], tensors: &mut [Tensor]) -> Result<()> {
    let mut at = 0;
    for t in tensors.iter_mut() {
        let n = t.elem_count();
        let v = Tensor::from_slice(&flat[at..at + n], t.shape(), &Device::Cpu)?
            .to_dtype(t.dtype())?
            .to_device(t.device())?;
        *t = v;
        at += n;
    }
    Ok(())
}

/// One process's place in a group, from torchrun's environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// This process's GPU on its node.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// torchrun's default rendezvous port.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

impl DistEnv {
    /// From `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; None when
    /// `WORLD_SIZE` is unset (not launched as a rank).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any lookup (tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |key: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("environment {key}={v:?}: expected a number")))
        };
        let world_size = num("WORLD_SIZE", &world)?;
        let need = |key: &str| {
            get(key).ok_or_else(|| {
                Error::Invalid(format!(
                    "WORLD_SIZE is set but {key} is not (a rank needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, as torchrun sets them)"
                ))
            })
        };
        let rank = num("RANK", &need("RANK")?)?;
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", &v)?,
            None => rank,
        };
        let port = need("MASTER_PORT")?;
        let master_port = port.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "environment MASTER_PORT={port:?}: expected a port number"
            ))
        })?;
        if world_size == 0 || rank >= world_size {
            return Err(Error::Invalid(format!(
                "environment RANK={rank}, WORLD_SIZE={world_size}: RANK must be below WORLD_SIZE"
            )));
        }
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr: need("MASTER_ADDR")?,
            master_port,
        }))
    }
}

/// How `diffuse train --gpus N` (`--nproc-per-node N`) starts the ranks of one node, as
/// torchrun's `--nnodes/--node-rank/--nproc-per-node/--master-addr/--master-port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub nnodes: usize,
    pub node_rank: usize,
    pub nproc_per_node: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl LaunchPlan {
    /// The environment of each process this node starts (torchrun's variables).
    pub fn child_envs(&self) -> Result<Vec<Vec<(String, String)>>> {
        if self.nnodes == 0 || self.nproc_per_node == 0 {
            return Err(Error::Invalid(
                "--nnodes and --gpus (--nproc-per-node) must be at least 1".into(),
            ));
        }
        if self.node_rank >= self.nnodes {
            return Err(Error::Invalid(format!(
                "--node-rank {} must be below --nnodes {}",
                self.node_rank, self.nnodes
            )));
        }
        let world = self.nnodes * self.nproc_per_node;
        Ok((0..self.nproc_per_node)
            .map(|local| {
                let rank = self.node_rank * self.nproc_per_node + local;
                [
                    ("RANK", rank.to_string()),
                    ("WORLD_SIZE", world.to_string()),
                    ("LOCAL_RANK", local.to_string()),
                    ("LOCAL_WORLD_SIZE", self.nproc_per_node.to_string()),
                    ("GROUP_RANK", self.node_rank.to_string()),
                    ("MASTER_ADDR", self.master_addr.clone()),
                    ("MASTER_PORT", self.master_port.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            })
            .collect())
    }
}

/// Joins the group that `env` describes: NCCL on a CUDA device (the `cuda` feature), TCP on the
/// CPU. Blocks until every rank has joined (or `timeout` passes).
pub fn connect(
    env: &DistEnv,
    device: &Device,
    timeout: std::time::Duration,
) -> Result<Box<dyn Collective>> {
    let tcp = tcp::TcpGroup::rendezvous(env, timeout)?;
    if device.is_cuda() {
        #[cfg(feature = "cuda")]
        return Ok(Box::new(nccl::NcclGroup::new(tcp, device)?));
        #[cfg(not(feature = "cuda"))]
        return Err(Error::Invalid(
            "a CUDA process group needs the CUDA build (cargo build --release --features cuda; tools/cuda/build.sh)".into(),
        ));
    }
    Ok(Box::new(tcp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shards_are_contiguous_equal_slices() {
        assert_eq!(shard_rows(8, 0, 1).unwrap(), (0, 8));
        assert_eq!(shard_rows(8, 0, 2).unwrap(), (0, 4));
        assert_eq!(shard_rows(8, 1, 2).unwrap(), (4, 4));
        assert_eq!(shard_rows(12, 2, 4).unwrap(), (6, 3));
        // Together the shards cover the batch once, in order.
        let rows: Vec<usize> = (0..4)
            .flat_map(|r| {
                let (o, n) = shard_rows(12, r, 4).unwrap();
                o..o + n
            })
            .collect();
        assert_eq!(rows, (0..12).collect::<Vec<_>>());
        let e = shard_rows(10, 0, 4).unwrap_err().to_string();
        assert!(
            e.contains("batch_size = 10") && e.contains("multiple of 4"),
            "{e}"
        );
        assert!(shard_rows(8, 2, 2).is_err());
    }

    #[test]
    fn torchrun_environment() {
        let vars = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        assert_eq!(DistEnv::from_vars(vars(&[])).unwrap(), None);
        let env = DistEnv::from_vars(vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (3, 4, 1));
        let e = DistEnv::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
        let e = DistEnv::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("below WORLD_SIZE"), "{e}");
    }

    #[test]
    fn launch_plan_numbers_ranks_by_node() {
        let plan = LaunchPlan {
            nnodes: 2,
            node_rank: 1,
            nproc_per_node: 4,
            master_addr: "node0".into(),
            master_port: 29500,
        };
        let envs = plan.child_envs().unwrap();
        assert_eq!(envs.len(), 4);
        let get = |e: &Vec<(String, String)>, k: &str| {
            e.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&envs[0], "RANK"), "4");
        assert_eq!(get(&envs[3], "RANK"), "7");
        assert_eq!(get(&envs[3], "LOCAL_RANK"), "3");
        assert_eq!(get(&envs[2], "WORLD_SIZE"), "8");
        assert_eq!(get(&envs[2], "MASTER_ADDR"), "node0");
        let bad = LaunchPlan {
            node_rank: 2,
            ..plan
        };
        assert!(bad
            .child_envs()
            .unwrap_err()
            .to_string()
            .contains("--node-rank"));
    }
}

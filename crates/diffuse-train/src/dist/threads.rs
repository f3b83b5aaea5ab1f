//! An in-process [`Collective`]: the ranks are threads sharing one round of contributions
//! (a mutex and a condition variable). Used by the CPU tests of data-parallel training.
//! Sums run in rank order on every rank, so all ranks get bit-identical results — the same sums
//! `TcpGroup` computes. A rank whose handle is dropped while others wait fails their call
//! instead of hanging them.

use super::{flatten, unflatten, Collective};
use crate::{Error, Result};
use candle_core::Tensor;
use std::sync::{Arc, Condvar, Mutex};

/// One rank's handle; make all of them with [`ThreadGroup::new`] and move one into each thread.
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

struct Shared {
    round: Mutex<Round>,
    ready: Condvar,
}

#[derive(Default)]
struct Round {
    /// Completed rounds.
    generation: u64,
    slots: Vec<Option<Vec<u8>>>,
    arrived: usize,
    /// The last completed round's contributions, by rank.
    result: Arc<Vec<Vec<u8>>>,
    /// A rank that left (dropped its handle) before the group finished.
    left: Option<usize>,
}

impl ThreadGroup {
    /// Handles for ranks `0..world`.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            round: Mutex::new(Round {
                slots: vec![None; world],
                ..Default::default()
            }),
            ready: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Every rank's `bytes`, by rank, once all have contributed.
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Arc<Vec<Vec<u8>>>> {
        let mut r = self.shared.round.lock().expect("group lock");
        if let Some(l) = r.left {
            return Err(left(l));
        }
        let generation = r.generation;
        r.slots[self.rank] = Some(bytes);
        r.arrived += 1;
        if r.arrived == self.world {
            r.result = Arc::new(
                r.slots
                    .iter_mut()
                    .map(|s| s.take().expect("slot"))
                    .collect(),
            );
            r.arrived = 0;
            r.generation += 1;
            self.shared.ready.notify_all();
        } else {
            while r.generation == generation {
                if let Some(l) = r.left {
                    return Err(left(l));
                }
                r = self.shared.ready.wait(r).expect("group lock");
            }
        }
        Ok(r.result.clone())
    }
}

fn left(rank: usize) -> Error {
    Error::Invalid(format!(
        "data-parallel rank {rank} stopped (see its error); the group cannot continue"
    ))
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        if let Ok(mut r) = self.shared.round.lock() {
            r.left.get_or_insert(self.rank);
            self.shared.ready.notify_all();
        }
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        let mine: Vec<u8> = flatten(tensors)?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let all = self.all_gather(mine)?;
        let mut sum = vec![0f32; all[0].len() / 4];
        for contribution in all.iter() {
            if contribution.len() != sum.len() * 4 {
                return Err(Error::Invalid(
                    "all-reduce: the ranks passed tensors of different sizes".into(),
                ));
            }
            for (s, b) in sum.iter_mut().zip(contribution.chunks_exact(4)) {
                *s += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        unflatten(&sum, tensors)
    }

    fn broadcast(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mine = if self.rank == 0 {
            bytes.to_vec()
        } else {
            vec![]
        };
        Ok(self.all_gather(mine)?[0].clone())
    }

    fn barrier(&self) -> Result<()> {
        self.all_gather(vec![]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn all_reduce_broadcast_barrier() {
        let out: Vec<(Vec<f32>, Vec<f32>, Vec<u8>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadGroup::new(3)
                .into_iter()
                .map(|g| {
                    s.spawn(move || {
                        let r = g.rank() as f32;
                        let mut t = vec![
                            Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap(),
                            Tensor::new(&[[1f32], [r]], &Device::Cpu).unwrap(),
                        ];
                        for _ in 0..5 {
                            g.barrier().unwrap();
                        }
                        g.all_reduce_sum(&mut t).unwrap();
                        let mut m = vec![Tensor::new(&[r], &Device::Cpu).unwrap()];
                        g.all_reduce_mean(&mut m).unwrap();
                        let b = g
                            .broadcast(format!("from {}", g.rank()).as_bytes())
                            .unwrap();
                        assert_eq!(t[1].dims(), &[2, 1]);
                        let mut flat: Vec<f32> = t[0].to_vec1().unwrap();
                        flat.extend(t[1].flatten_all().unwrap().to_vec1::<f32>().unwrap());
                        (flat, m[0].to_vec1().unwrap(), b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (sum, mean, b) in out {
            assert_eq!(sum, vec![3.0, 30.0, 3.0, 3.0]);
            assert_eq!(mean, vec![1.0]);
            assert_eq!(b, b"from 0");
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others() {
        let mut g = ThreadGroup::new(2);
        let r1 = g.pop().unwrap();
        let r0 = g.pop().unwrap();
        let waiter = std::thread::spawn(move || r0.barrier());
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(r1);
        let e = waiter.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("rank 1 stopped"), "{e}");
    }
}

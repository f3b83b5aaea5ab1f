//! The TCP rendezvous and a CPU [`Collective`] over it (gloo's role in torch.distributed):
//! rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every other rank connects and says who it is,
//! and the connections stay open as a star. An all-reduce sends every rank's values to rank 0,
//! which sums them in rank order and sends the sum back; a broadcast sends rank 0's bytes out.
//! The NCCL backend uses the same rendezvous to hand out NCCL's unique id.
//!
//! Frames: 8-byte little-endian length, then the payload (f32 values little-endian).

use super::{flatten, unflatten, Collective, DistEnv};
use crate::{Error, Result};
use candle_core::Tensor;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HELLO: &[u8; 8] = b"DIFFUSE1";

/// One rank's end of the star.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// Rank 0: the streams of ranks 1..world, in rank order. Others: the stream to rank 0.
    links: Vec<Mutex<TcpStream>>,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("data-parallel {what}: {e}"))
}

fn send(s: &mut TcpStream, payload: &[u8]) -> Result<()> {
    s.write_all(&(payload.len() as u64).to_le_bytes())
        .and_then(|_| s.write_all(payload))
        .map_err(io("send"))
}

fn recv(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).map_err(io("receive"))?;
    let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
    s.read_exact(&mut buf).map_err(io("receive"))?;
    Ok(buf)
}

impl TcpGroup {
    /// Joins the group of `env`: rank 0 binds `MASTER_ADDR:MASTER_PORT` and waits for the
    /// others; the others connect (retrying until `timeout`: rank 0 may start later).
    pub fn rendezvous(env: &DistEnv, timeout: Duration) -> Result<TcpGroup> {
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        if env.world_size == 1 {
            return Ok(TcpGroup {
                rank: 0,
                world: 1,
                links: vec![],
            });
        }
        if env.rank == 0 {
            // Listen on every interface when MASTER_ADDR names this host from outside.
            let listener = TcpListener::bind(&addr)
                .or_else(|_| TcpListener::bind(("0.0.0.0", env.master_port)))
                .map_err(|e| {
                    Error::Invalid(format!(
                        "rank 0 cannot listen on {addr} ({e}): set MASTER_PORT / --master-port to a free port"
                    ))
                })?;
            Self::host(listener, env.world_size, timeout)
        } else {
            Self::join(&addr, env.rank, env.world_size, timeout)
        }
    }

    /// Rank 0: accepts ranks 1..world on `listener`.
    pub fn host(listener: TcpListener, world: usize, timeout: Duration) -> Result<TcpGroup> {
        let deadline = Instant::now() + timeout;
        listener.set_nonblocking(true).map_err(io("listen"))?;
        let mut links: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while links.iter().any(|l| l.is_none()) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).map_err(io("accept"))?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))
                        .map_err(io("accept"))?;
                    let hello = recv(&mut s)?;
                    if hello.len() != 24 || &hello[..8] != HELLO {
                        return Err(Error::Invalid(format!(
                            "data-parallel rendezvous: {peer} is not a diffuse rank"
                        )));
                    }
                    let rank = u64::from_le_bytes(hello[8..16].try_into().expect("8")) as usize;
                    let w = u64::from_le_bytes(hello[16..24].try_into().expect("8")) as usize;
                    if w != world || rank == 0 || rank >= world || links[rank - 1].is_some() {
                        return Err(Error::Invalid(format!(
                            "data-parallel rendezvous: {peer} says rank {rank} of {w}, expected a new rank of 1..{world} (two runs on one MASTER_PORT?)"
                        )));
                    }
                    s.set_read_timeout(None).map_err(io("accept"))?;
                    s.set_nodelay(true).map_err(io("accept"))?;
                    links[rank - 1] = Some(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = links
                            .iter()
                            .enumerate()
                            .filter(|(_, l)| l.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        return Err(Error::Invalid(format!(
                            "data-parallel rendezvous: ranks {} did not join within {} s",
                            missing.join(", "),
                            timeout.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io("accept")(e)),
            }
        }
        let mut links: Vec<Mutex<TcpStream>> = links
            .into_iter()
            .map(|l| Mutex::new(l.expect("joined")))
            .collect();
        // Everyone is here: release the ranks together.
        for l in &mut links {
            send(l.get_mut().expect("link"), b"go")?;
        }
        Ok(TcpGroup {
            rank: 0,
            world,
            links,
        })
    }

    /// Ranks 1..world: connects to rank 0 at `addr`.
    pub fn join(addr: &str, rank: usize, world: usize, timeout: Duration) -> Result<TcpGroup> {
        let deadline = Instant::now() + timeout;
        let mut s = loop {
            let tried = addr
                .to_socket_addrs()
                .map_err(io("resolve MASTER_ADDR"))?
                .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok());
            match tried {
                Some(s) => break s,
                None if Instant::now() > deadline => {
                    return Err(Error::Invalid(format!(
                        "data-parallel rendezvous: rank {rank} could not reach rank 0 at {addr} within {} s",
                        timeout.as_secs()
                    )))
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        s.set_nodelay(true).map_err(io("connect"))?;
        let mut hello = HELLO.to_vec();
        hello.extend((rank as u64).to_le_bytes());
        hello.extend((world as u64).to_le_bytes());
        send(&mut s, &hello)?;
        if recv(&mut s)? != b"go" {
            return Err(Error::Invalid(
                "data-parallel rendezvous: unexpected reply from rank 0".into(),
            ));
        }
        Ok(TcpGroup {
            rank,
            world,
            links: vec![Mutex::new(s)],
        })
    }

    fn link(&self, i: usize) -> std::sync::MutexGuard<'_, TcpStream> {
        self.links[i].lock().expect("link lock")
    }

    /// Sum over ranks in rank order, computed by rank 0 and sent to all.
    fn reduce(&self, mine: Vec<f32>) -> Result<Vec<f32>> {
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        if self.world == 1 {
            return Ok(mine);
        }
        if self.rank != 0 {
            let mut s = self.link(0);
            send(&mut s, &bytes(&mine))?;
            return Ok(floats(&recv(&mut s)?));
        }
        let mut sum = mine;
        for i in 0..self.links.len() {
            let theirs = floats(&recv(&mut self.link(i))?);
            if theirs.len() != sum.len() {
                return Err(Error::Invalid(format!(
                    "all-reduce: rank {} passed {} values, rank 0 {}",
                    i + 1,
                    theirs.len(),
                    sum.len()
                )));
            }
            for (s, t) in sum.iter_mut().zip(theirs) {
                *s += t;
            }
        }
        let out = bytes(&sum);
        for i in 0..self.links.len() {
            send(&mut self.link(i), &out)?;
        }
        Ok(sum)
    }
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        let sum = self.reduce(flatten(tensors)?)?;
        unflatten(&sum, tensors)
    }

    fn broadcast(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        if self.rank == 0 {
            for i in 0..self.links.len() {
                send(&mut self.link(i), bytes)?;
            }
            Ok(bytes.to_vec())
        } else {
            recv(&mut self.link(0))
        }
    }

    fn barrier(&self) -> Result<()> {
        self.reduce(vec![]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn star_all_reduce_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Duration::from_secs(20);
        let results: Vec<(Vec<f32>, Vec<u8>)> = std::thread::scope(|s| {
            let mut hs = vec![s.spawn(move || {
                let g = TcpGroup::host(listener, 3, t).unwrap();
                work(&g)
            })];
            for rank in [2, 1] {
                hs.push(s.spawn(move || {
                    let env = DistEnv {
                        rank,
                        world_size: 3,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                    };
                    work(&TcpGroup::rendezvous(&env, t).unwrap())
                }));
            }
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (sum, b) in results {
            assert_eq!(sum, vec![3.0, 1.5, 3.0]);
            assert_eq!(b, b"id-bytes");
        }
    }

    fn work(g: &TcpGroup) -> (Vec<f32>, Vec<u8>) {
        let r = g.rank() as f32;
        let mut t = vec![
            Tensor::new(&[r, 0.5], &Device::Cpu).unwrap(),
            Tensor::new(&[1f32], &Device::Cpu).unwrap(),
        ];
        g.barrier().unwrap();
        g.all_reduce_sum(&mut t).unwrap();
        let b = g
            .broadcast(if g.rank() == 0 { b"id-bytes" } else { b"" })
            .unwrap();
        g.barrier().unwrap();
        let mut v: Vec<f32> = t[0].to_vec1().unwrap();
        v.extend(t[1].to_vec1::<f32>().unwrap());
        (v, b)
    }

    #[test]
    fn a_missing_rank_times_out_with_a_message() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = TcpGroup::host(listener, 2, Duration::from_millis(200))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ranks 1 did not join"), "{e}");
    }
}

//! A batched loader: shuffles by seed (one permutation per epoch), decodes and transforms on
//! background threads, and hands batches out in a fixed order, whatever the thread count or
//! timing — so a training run is reproducible and resumes exactly from a [`Position`].

use crate::datasets::Dataset;
use crate::transform::Transform;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Decoding threads (at least 1).
    pub workers: usize,
    pub shuffle: bool,
    /// Skip (and count) samples that fail to decode instead of stopping.
    pub skip_bad: bool,
    pub transform: Transform,
}

/// Where a loader stands: the next batch to hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: u64,
    pub batch: u64,
}

/// One batch, `[b, c, h, w]` row-major f32 in [−1, 1].
#[derive(Debug, Clone)]
pub struct Batch {
    pub pixels: Vec<f32>,
    pub shape: [usize; 4],
    pub labels: Option<Vec<u32>>,
    /// The data set's index of each row (for what else the set says about it: captions).
    pub indices: Vec<usize>,
    /// The position this batch was at.
    pub position: Position,
    /// Samples skipped as unreadable (with `skip_bad`).
    pub skipped: Vec<String>,
}

impl Batch {
    pub fn to_tensor(&self, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        Ok(candle_core::Tensor::from_vec(
            self.pixels.clone(),
            self.shape.to_vec(),
            device,
        )?)
    }
}

struct Job {
    position: Position,
    /// (dataset index, flip)
    items: Vec<(usize, bool)>,
}

/// The loader; iterate with [`Loader::next_batch`].
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
    next: Position,
    issued: Position,
    perm_epoch: Option<(u64, Vec<usize>)>,
    jobs: Option<Sender<Job>>,
    results: Receiver<(Position, Result<Batch>)>,
    ready: BTreeMap<(u64, u64), Result<Batch>>,
    in_flight: usize,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// (rank, world): hand out only this rank's contiguous slice of every batch.
    shard: (usize, usize),
}

/// splitmix64: a well-mixed hash for per-sample coin flips.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Loader {
    /// Starts the workers; the first batch is the one at `start`.
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig, start: Position) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Invalid("batch_size must be at least 1".into()));
        }
        if dataset.len() < config.batch_size {
            return Err(Error::Invalid(format!(
                "the data set has {} samples, fewer than one batch of {}",
                dataset.len(),
                config.batch_size
            )));
        }
        let (jtx, jrx) = channel::<Job>();
        let (rtx, rrx) = channel();
        let jrx = Arc::new(Mutex::new(jrx));
        let workers = (0..config.workers.max(1))
            .map(|w| {
                let (jrx, rtx, ds, cfg) =
                    (jrx.clone(), rtx.clone(), dataset.clone(), config.clone());
                std::thread::Builder::new()
                    .name(format!("diffuse-loader-{w}"))
                    .spawn(move || loop {
                        let job = match jrx.lock().expect("job lock").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let pos = job.position;
                        if rtx.send((pos, build(&*ds, &cfg, job))).is_err() {
                            return;
                        }
                    })
                    .expect("spawn loader thread")
            })
            .collect();
        Ok(Loader {
            dataset,
            config,
            next: start,
            issued: start,
            perm_epoch: None,
            jobs: Some(jtx),
            results: rrx,
            ready: BTreeMap::new(),
            in_flight: 0,
            workers,
            shard: (0, 1),
        })
    }

    /// Data-parallel training (DDP): every batch keeps the same global order, position and
    /// flips, and this loader decodes and hands out only rank `rank`'s contiguous
    /// `batch_size / world` rows of it. Call before the first batch.
    pub fn set_shard(&mut self, rank: usize, world: usize) -> Result<()> {
        let bs = self.config.batch_size;
        if world == 0 || rank >= world || !bs.is_multiple_of(world) {
            return Err(Error::Invalid(format!(
                "rank {rank} of {world}: batch_size {bs} must split into equal slices"
            )));
        }
        if self.in_flight > 0 || self.issued != self.next {
            return Err(Error::Invalid("set_shard after the first batch".into()));
        }
        self.shard = (rank, world);
        Ok(())
    }

    /// Full batches per epoch (the last partial batch is dropped, as `drop_last=True`).
    pub fn batches_per_epoch(&self) -> u64 {
        (self.dataset.len() / self.config.batch_size) as u64
    }

    /// The position of the next batch [`Loader::next_batch`] returns.
    pub fn position(&self) -> Position {
        self.next
    }

    fn permutation(&mut self, epoch: u64) -> &[usize] {
        if self.perm_epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut p: Vec<usize> = (0..self.dataset.len()).collect();
            if self.config.shuffle {
                let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
                rng.set_stream(epoch);
                p.shuffle(&mut rng);
            }
            self.perm_epoch = Some((epoch, p));
        }
        &self.perm_epoch.as_ref().expect("set").1
    }

    fn issue(&mut self) {
        let pos = self.issued;
        let bs = self.config.batch_size;
        let (seed, hflip) = (self.config.seed, self.config.transform.hflip);
        let (rank, world) = self.shard;
        let perm = self.permutation(pos.epoch);
        let start = pos.batch as usize * bs;
        let rows = bs / world;
        let items = perm[start..start + bs]
            .iter()
            .enumerate()
            .skip(rank * rows)
            .take(rows)
            .map(|(k, &i)| {
                let flip =
                    hflip && mix(seed ^ mix(pos.epoch) ^ mix((start + k) as u64 ^ 0xF11F)) & 1 == 1;
                (i, flip)
            })
            .collect();
        if let Some(tx) = &self.jobs {
            let _ = tx.send(Job {
                position: pos,
                items,
            });
            self.in_flight += 1;
        }
        self.issued = if pos.batch + 1 >= self.batches_per_epoch() {
            Position {
                epoch: pos.epoch + 1,
                batch: 0,
            }
        } else {
            Position {
                epoch: pos.epoch,
                batch: pos.batch + 1,
            }
        };
    }

    /// The next batch in order (blocks until it is decoded).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let ahead = 2 * self.config.workers.max(1);
        while self.in_flight < ahead {
            self.issue();
        }
        let key = (self.next.epoch, self.next.batch);
        loop {
            if let Some(b) = self.ready.remove(&key) {
                self.next = if self.next.batch + 1 >= self.batches_per_epoch() {
                    Position {
                        epoch: self.next.epoch + 1,
                        batch: 0,
                    }
                } else {
                    Position {
                        epoch: self.next.epoch,
                        batch: self.next.batch + 1,
                    }
                };
                return b;
            }
            let (pos, b) = self
                .results
                .recv()
                .map_err(|_| Error::Invalid("loader workers stopped".into()))?;
            self.in_flight -= 1;
            self.ready.insert((pos.epoch, pos.batch), b);
        }
    }
}

/// What [`measure`] saw of the loader alone, with nothing else consuming its batches.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Images in the timed batches (the first batch is timed apart).
    pub images: usize,
    pub seconds: f64,
    /// The first batch, which also waits for the workers to start.
    pub first_batch_s: f64,
}

impl Throughput {
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}

/// Times `batches` batches after the first from a fresh loader over `dataset`: how fast the
/// loader can feed a training step that costs nothing.
pub fn measure(
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
    batches: usize,
) -> Result<Throughput> {
    let start = std::time::Instant::now();
    let mut loader = Loader::new(dataset, config, Position::default())?;
    loader.next_batch()?;
    let first_batch_s = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let mut images = 0;
    for _ in 0..batches {
        images += loader.next_batch()?.shape[0];
    }
    Ok(Throughput {
        images,
        seconds: start.elapsed().as_secs_f64(),
        first_batch_s,
    })
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.jobs.take(); // workers see the closed channel and exit
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn build(ds: &dyn Dataset, cfg: &LoaderConfig, job: Job) -> Result<Batch> {
    let t = &cfg.transform;
    let c = ds.channels();
    let per = c * t.size * t.size;
    let mut pixels = Vec::with_capacity(job.items.len() * per);
    let mut labels = Vec::with_capacity(job.items.len());
    let mut indices = Vec::with_capacity(job.items.len());
    let mut skipped = Vec::new();
    for (i, flip) in job.items {
        match ds.get(i) {
            Ok(s) => {
                if s.channels != c {
                    return Err(Error::Invalid(format!(
                        "sample {i} has {} channels, the data set {c}",
                        s.channels
                    )));
                }
                pixels.extend(t.apply(&s, flip));
                labels.push(s.label);
                indices.push(i);
            }
            Err(e) if cfg.skip_bad => skipped.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    let n = labels.len();
    let labels = if ds.num_classes().is_some() {
        Some(labels.into_iter().map(|l| l.unwrap_or(0)).collect())
    } else {
        None
    };
    Ok(Batch {
        pixels,
        shape: [n, c, t.size, t.size],
        labels,
        indices,
        position: job.position,
        skipped,
    })
}

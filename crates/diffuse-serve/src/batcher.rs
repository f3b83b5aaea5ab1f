//! The batching queue: requests for one model that need the same number of model calls (and
//! image size) are denoised together, up to `max_batch` images, waiting at most `max_wait`.
//! Each request keeps its own sampler plan, sampler state, noise streams, labels or prompt
//! embeddings and guidance scale; only the network call (UNet or DiT) is shared (it takes a
//! timestep and a label or embedding per row). Inference runs on a plain thread per model, off
//! the async runtime. A text-to-image job's prompts are encoded there once, when it starts; a
//! latent pipeline's VAE decodes each job's latents after the loop.
//!
//! An edit ([`JobEdit`]) starts mid-plan from its image noised to the strength's level and,
//! with a mask, puts the known region back after every step, as
//! [`diffuse_core::sampler::edit::img2img`] and `inpaint` (blend) do: it batches with any job
//! that has as many calls left, each at its own timestep.

use crate::metrics::Metrics;
use candle_core::{DType, Device, Shape, Tensor};
use diffuse_core::denoiser::GuidanceInterval;
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::edit::blend_known;
use diffuse_core::sampler::{Sampler, SamplerState};
use diffuse_models::pipeline::PromptEncoder;
use diffuse_models::{AutoencoderKL, Network};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// One generation request, planned and validated.
pub struct Job {
    pub n: usize,
    pub seed: u64,
    /// One label per image (class-conditional models).
    pub labels: Option<Vec<u32>>,
    /// The prompts of a text-to-image model, for all n images.
    pub prompt: Option<JobPrompt>,
    pub guidance_scale: f64,
    /// Guide only at noise levels in this interval.
    pub guidance_interval: Option<GuidanceInterval>,
    pub null_class: u32,
    pub sampler: Sampler,
    pub size: (usize, usize),
    pub cancel: Arc<AtomicBool>,
    pub progress: Option<mpsc::UnboundedSender<(usize, usize)>>,
    pub reply: oneshot::Sender<Result<JobResult, JobError>>,
    pub enqueued: Instant,
    /// The job's share of the server's in-flight images, given back when the job is dropped
    /// (done, failed or cancelled).
    pub admission: Admission,
    /// Start from an image instead of pure noise.
    pub edit: Option<JobEdit>,
}

/// A text-to-image job's prompts, encoded by the worker when the job starts.
#[derive(Debug, Clone)]
pub struct JobPrompt {
    pub prompt: String,
    /// The unconditional half of guidance ("" when none was given); encoded only when guided.
    pub negative: String,
    /// diffusers' `clip_skip` (0: the text encoder's last layer).
    pub clip_skip: usize,
}

/// An image to edit, at image (pixel) size, on the CPU; a latent pipeline's worker encodes it.
pub struct JobEdit {
    /// `[1, C, H, W]` in [−1, 1], used for all n images.
    pub images: Tensor,
    /// `[1, 1, H, W]`, 1 where the image is regenerated; none: image-to-image.
    pub mask: Option<Tensor>,
    /// The call of the plan the edit starts at ([`Sampler::begin_index`] of its strength).
    pub begin: usize,
}

/// Model calls per image of `sampler`'s plan from where `edit` starts it (all without one).
pub fn calls_left(sampler: &Sampler, edit: Option<&JobEdit>) -> usize {
    sampler.len() - edit.map_or(0, |e| e.begin)
}

impl Job {
    /// Model calls left to run.
    fn calls(&self) -> usize {
        calls_left(&self.sampler, self.edit.as_ref())
    }

    /// Gives the job's in-flight images back, then answers: a client that has its answer can
    /// be admitted again at once.
    fn finish(self, result: Result<JobResult, JobError>) {
        let Job {
            reply, admission, ..
        } = self;
        drop(admission);
        let _ = reply.send(result);
    }
}

/// `n` images counted in a shared in-flight total while this lives.
#[derive(Debug)]
pub struct Admission {
    counter: Arc<AtomicUsize>,
    n: usize,
}

impl Admission {
    /// Counts `n` more images in `counter` if the total stays within `max`.
    pub fn take(counter: &Arc<AtomicUsize>, n: usize, max: usize) -> Option<Admission> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                (c + n <= max).then_some(c + n)
            })
            .ok()
            .map(|_| Admission {
                counter: counter.clone(),
                n,
            })
    }

    /// Outside a server (tests, benchmarks): counted nowhere.
    pub fn untracked(n: usize) -> Admission {
        Admission {
            counter: Arc::new(AtomicUsize::new(n)),
            n,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// What a finished job returns.
pub struct JobResult {
    /// [n, c, h, w] in the model's range.
    pub images: Tensor,
    pub queue_ms: f64,
    pub compute_ms: f64,
    /// Images denoised in the batch this job ran in.
    pub batch_images: usize,
}

/// Why a queued job failed: the model or sampler error, shared by every job of the batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub Arc<diffuse_models::Error>);

impl From<diffuse_models::Error> for JobError {
    fn from(e: diffuse_models::Error) -> Self {
        JobError(Arc::new(e))
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    shutdown: AtomicBool,
}

/// Handle to one model's queue and worker thread.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue: usize,
}

impl Batcher {
    /// Starts the worker thread for `model` (and `vae`, for a latent pipeline; `text`, for a
    /// text-to-image one).
    pub fn start(
        model: Arc<Network>,
        vae: Option<Arc<AutoencoderKL>>,
        text: Option<Arc<PromptEncoder>>,
        device: Device,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let b = Batcher {
            shared: shared.clone(),
            capacity: config.queue,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("diffuse-batcher".into())
            .spawn(move || worker(shared, model, vae, text, device, config, metrics))
            .expect("spawn batcher thread");
        b
    }

    /// Queues a job, or says why not (the queue holds at most `queue` jobs).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let mut q = self.shared.queue.lock().expect("queue lock");
        if q.len() >= self.capacity {
            return Err(SubmitError::QueueFull);
        }
        q.push_back(job);
        self.metrics.queue_depth_add(1);
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Jobs waiting (not yet running).
    pub fn depth(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").len()
    }

    /// Stops taking jobs; the worker finishes what is queued and exits.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.ready.notify_all();
    }
}

fn key(j: &Job) -> (usize, (usize, usize)) {
    (j.calls(), j.size)
}

/// What a worker runs: the network and, for a latent or text-to-image pipeline, the VAE and
/// the prompt encoder.
struct Parts<'a> {
    model: &'a Network,
    vae: Option<&'a AutoencoderKL>,
    text: Option<&'a PromptEncoder>,
}

fn worker(
    shared: Arc<Shared>,
    model: Arc<Network>,
    vae: Option<Arc<AutoencoderKL>>,
    text: Option<Arc<PromptEncoder>>,
    device: Device,
    config: BatchConfig,
    metrics: Arc<Metrics>,
) {
    loop {
        let mut q = shared.queue.lock().expect("queue lock");
        while q.is_empty() {
            if shared.shutdown.load(Ordering::SeqCst) {
                return;
            }
            q = shared
                .ready
                .wait_timeout(q, Duration::from_millis(200))
                .expect("queue lock")
                .0;
        }
        let first = q.pop_front().expect("non-empty");
        let k = key(&first);
        let mut images = first.n;
        let mut batch = vec![first];
        let deadline = Instant::now() + config.max_wait;
        loop {
            // Take every compatible job that fits.
            let mut i = 0;
            while i < q.len() && images < config.max_batch {
                if key(&q[i]) == k && images + q[i].n <= config.max_batch {
                    let j = q.remove(i).expect("index checked");
                    images += j.n;
                    batch.push(j);
                } else {
                    i += 1;
                }
            }
            let now = Instant::now();
            if images >= config.max_batch
                || now >= deadline
                || shared.shutdown.load(Ordering::SeqCst)
            {
                break;
            }
            q = shared
                .ready
                .wait_timeout(q, deadline - now)
                .expect("queue lock")
                .0;
        }
        metrics.queue_depth_add(-(batch.len() as i64));
        drop(q);
        let parts = Parts {
            model: &model,
            vae: vae.as_deref(),
            text: text.as_deref(),
        };
        run_batch(&parts, &device, batch, &metrics);
    }
}

struct Running {
    job: Job,
    state: SamplerState,
    noise: SeededNoise,
    x: Tensor,
    /// Inpainting: the known region put back after every step.
    blend: Option<Blend>,
    /// A text-to-image job's prompt embeddings.
    embeds: Option<Embeds>,
}

/// A job's prompt embeddings, `[n, L, d]` each: the conditional rows, and the unconditional
/// ones (the negative prompt's) when it is guided.
struct Embeds {
    cond: Tensor,
    uncond: Option<Tensor>,
}

/// Encodes a job's prompts once (prompt and negative in one call when guided), repeated for
/// its n images.
fn embed(
    job: &Job,
    text: Option<&PromptEncoder>,
    device: &Device,
) -> diffuse_models::Result<Option<Embeds>> {
    let (p, text) = match (&job.prompt, text) {
        (None, _) => return Ok(None),
        (Some(p), Some(t)) => (p, t),
        (Some(_), None) => {
            return Err(diffuse_models::Error::Input(
                "the model is not text-conditional: it takes no prompt".into(),
            ))
        }
    };
    let guided = job.guidance_scale != 1.0;
    let mut prompts = vec![p.prompt.clone()];
    if guided {
        prompts.push(p.negative.clone());
    }
    let emb = text.encode(&prompts, p.clip_skip, device)?; // [1 or 2, L, d]
    let rows = |i: usize| emb.narrow(0, i, 1)?.repeat((job.n, 1, 1));
    Ok(Some(Embeds {
        cond: rows(0)?,
        uncond: if guided { Some(rows(1)?) } else { None },
    }))
}

/// The known sample, its noise (drawn once, as diffusers' inpaint pipelines) and the mask.
struct Blend {
    known: Tensor,
    eps: Tensor,
    mask: Tensor,
    keep: Tensor,
}

/// Latents decoded at a time by a latent pipeline's VAE.
const VAE_SLICE: usize = 8;

/// A job's first sample (x_T, or its image noised to the edit's level), state and blend.
fn start(
    job: &Job,
    channels: usize,
    vae: Option<&AutoencoderKL>,
    device: &Device,
    noise: &mut SeededNoise,
) -> diffuse_models::Result<(Tensor, SamplerState, Option<Blend>)> {
    let (h, w) = job.size;
    let shape = Shape::from((job.n, channels, h, w));
    let sampler = &job.sampler;
    let Some(e) = &job.edit else {
        let x = (noise.randn(&shape, DType::F32, device)? * sampler.init_noise_sigma())?;
        return Ok((x, sampler.new_state(), None));
    };
    let images = e.images.to_device(device)?;
    let (known, mask) = diffuse_models::pipeline::edit_space(vae, &images, e.mask.as_ref())?;
    let known = known.repeat((job.n, 1, 1, 1))?;
    let eps = noise.randn(&shape, DType::F32, device)?;
    let x = if e.begin == sampler.len() {
        known.clone()
    } else {
        sampler.add_noise(&known, &eps, e.begin)?
    };
    let blend = match mask {
        Some(m) => {
            let mask = m.broadcast_as(known.shape())?.contiguous()?;
            Some(Blend {
                keep: (1.0 - &mask)?,
                mask,
                known,
                eps,
            })
        }
        None => None,
    };
    Ok((x, sampler.state_at(e.begin), blend))
}

fn run_batch(parts: &Parts, device: &Device, jobs: Vec<Job>, metrics: &Metrics) {
    let Parts { model, vae, text } = *parts;
    let start_time = Instant::now();
    let batch_images: usize = jobs.iter().map(|j| j.n).sum();
    metrics.observe_batch(batch_images);
    let mut running = Vec::with_capacity(jobs.len());
    let c = model.in_channels();
    for job in jobs {
        if job.cancel.load(Ordering::SeqCst) {
            metrics.cancelled();
            continue;
        }
        let mut noise = SeededNoise::from_streams((0..job.n as u64).map(|i| (job.seed, i)));
        let started = start(&job, c, vae, device, &mut noise)
            .and_then(|s| Ok((s, embed(&job, text, device)?)));
        match started {
            Ok(((x, state, blend), embeds)) => running.push(Running {
                state,
                job,
                noise,
                x,
                blend,
                embeds,
            }),
            Err(e) => {
                job.finish(Err(e.into()));
            }
        }
    }
    if running.is_empty() {
        return;
    }
    let total = running[0].job.calls();
    for i in 0..total {
        running.retain(|r| {
            let c = r.job.cancel.load(Ordering::SeqCst);
            if c {
                metrics.cancelled();
            }
            !c
        });
        if running.is_empty() {
            return;
        }
        if let Err(e) = step_all(model, &mut running) {
            let e = JobError::from(e);
            for r in running {
                r.job.finish(Err(e.clone()));
            }
            return;
        }
        for r in &running {
            if let Some(p) = &r.job.progress {
                let _ = p.send((i + 1, total));
            }
        }
    }
    let decoded: Vec<Result<Tensor, JobError>> = running
        .iter()
        .map(|r| match vae {
            Some(v) => Ok(diffuse_models::pipeline::decode_latents(
                v, &r.x, VAE_SLICE,
            )?),
            None => Ok(r.x.clone()),
        })
        .collect();
    let compute_ms = start_time.elapsed().as_secs_f64() * 1e3;
    metrics.observe_compute(batch_images, total, start_time.elapsed());
    for (r, images) in running.into_iter().zip(decoded) {
        let queue_ms = (start_time - r.job.enqueued).as_secs_f64() * 1e3;
        r.job.finish(images.map(|images| JobResult {
            images,
            queue_ms,
            compute_ms,
            batch_images,
        }));
    }
}

/// One model call for every running job, each at its own call of its plan, then each job's
/// own sampler step (and blend). The conditioning (labels, or a text model's prompt
/// embeddings) is stacked in the inputs' order: `[cond n, uncond n]` for a guided job.
fn step_all(model: &Network, running: &mut [Running]) -> diffuse_models::Result<()> {
    let mut inputs = Vec::new();
    let mut ts: Vec<f32> = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    let mut contexts: Vec<Tensor> = Vec::new();
    let conditional = model.is_class_conditional();
    let text = model.context_dim().is_some();
    let mut guided_rows = Vec::with_capacity(running.len());
    for r in running.iter() {
        let j = &r.job;
        let i = r.state.index();
        let x_in = j.sampler.scale_model_input(&r.x, i)?;
        let t = j.sampler.timesteps()[i] as f32;
        let guided =
            j.guidance_scale != 1.0 && j.sampler.guided_at(i, j.guidance_interval.as_ref())?;
        guided_rows.push(guided);
        let copies = if guided { 2 } else { 1 };
        for copy in 0..copies {
            inputs.push(x_in.clone());
            ts.extend(std::iter::repeat_n(t, j.n));
            if let Some(l) = &j.labels {
                if copy == 0 {
                    labels.extend(l);
                } else {
                    labels.extend(std::iter::repeat_n(j.null_class, j.n));
                }
            }
            if text {
                let e = r.embeds.as_ref().ok_or_else(|| {
                    diffuse_models::Error::Input(
                        "the model is text-conditional: a job without a prompt".into(),
                    )
                })?;
                let rows = if copy == 0 {
                    Some(&e.cond)
                } else {
                    e.uncond.as_ref()
                };
                contexts.push(rows.cloned().ok_or_else(|| {
                    diffuse_models::Error::Input(
                        "a guided job without the negative prompt's embeddings".into(),
                    )
                })?);
            }
        }
    }
    let x_all = Tensor::cat(&inputs, 0)?;
    let cond = if text {
        // Every prompt of one tokenizer is padded to the same length: the rows stack.
        Some(Tensor::cat(&contexts, 0)?)
    } else if conditional {
        Some(Tensor::from_vec(
            labels.clone(),
            labels.len(),
            x_all.device(),
        )?)
    } else {
        None
    };
    let out = model.predict(&x_all, &ts, cond.as_ref())?;
    let mut row = 0;
    for (r, guided) in running.iter_mut().zip(guided_rows) {
        let n = r.job.n;
        let model_out = if guided {
            // [cond n, uncond n]
            let out = diffuse_core::denoiser::guide(
                &out.narrow(0, row, 2 * n)?,
                &vec![r.job.guidance_scale; n],
            )?;
            row += 2 * n;
            out
        } else {
            row += n;
            out.narrow(0, row - n, n)?
        };
        let sampler = &r.job.sampler;
        let step = sampler.step(&mut r.state, &model_out, &r.x, &mut r.noise)?;
        r.x = match &r.blend {
            None => step.prev_sample,
            Some(b) => blend_known(
                sampler,
                &step.prev_sample,
                &b.known,
                &b.eps,
                (&b.mask, &b.keep),
                r.state.index(),
            )?,
        };
    }
    Ok(())
}

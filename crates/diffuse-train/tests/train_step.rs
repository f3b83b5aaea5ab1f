//! A tiny class-conditional UNet learns: the loss on a fixed MNIST batch falls under AdamW, for
//! the ε, flow-matching and EDM objectives; runs are bitwise repeatable and the RNG resumes.

use candle_core::{Device, Tensor, Var};
use diffuse_core::config::{PredictionType, SchedulerClass, SchedulerConfig};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_data::datasets::{Dataset, IdxDataset};
use diffuse_data::transform::{Fit, Transform};
use diffuse_models::weights::build_unet;
use diffuse_models::{Network, UNet2DConfig};
use diffuse_train::objective::{
    diffusion_loss, diffusion_loss_with_noise, draw_flow_sigmas, EdmTraining, ObjectiveConfig,
    SigmaSampling, TrainRng,
};
use diffuse_train::optim::{clip_grad_norm, AdamW, AdamWConfig};

fn tiny_config() -> UNet2DConfig {
    UNet2DConfig::from_json_str(
        r#"{"sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
            "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
            "attention_head_dim": 8, "num_class_embeds": 11}"#,
    )
    .unwrap()
}

fn batch() -> (Tensor, Vec<u32>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist");
    let ds = IdxDataset::open_dir(std::path::Path::new(dir), "t10k").unwrap();
    let t = Transform {
        size: 16,
        fit: Fit::Resize,
        hflip: false,
    };
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for i in 0..8 {
        let s = ds.get(i).unwrap();
        px.extend(t.apply(&s, false));
        labels.push(s.label.unwrap());
    }
    (
        Tensor::from_vec(px, (8, 1, 16, 16), &Device::Cpu).unwrap(),
        labels,
    )
}

fn train(
    prediction: PredictionType,
    edm: Option<EdmTraining>,
    steps: usize,
    seed: u64,
) -> Vec<f32> {
    let dev = Device::Cpu;
    let (model, varmap) = build_unet(&tiny_config(), &dev).unwrap();
    let model = Network::from(model);
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    // Same initial weights for every run: overwrite the random init deterministically.
    let mut init = TrainRng::new(1234);
    for (_, v) in &vars {
        let n = v.elem_count();
        let w = Tensor::from_vec(init_values(&mut init, n), v.shape(), &dev).unwrap();
        v.set(&(w * 0.05).unwrap()).unwrap();
    }
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default()).unwrap();
    let schedule =
        NoiseSchedule::from_config(&SchedulerConfig::default_for(SchedulerClass::Ddpm)).unwrap();
    let cfg = ObjectiveConfig {
        prediction,
        edm,
        min_snr_gamma: if prediction == PredictionType::Epsilon && edm.is_none() {
            Some(5.0)
        } else {
            None
        },
        cond_dropout: 0.1,
        null_class: Some(10),
        sigma_sampling: SigmaSampling::LogitNormal {
            mean: 0.0,
            std: 1.0,
        },
        ..Default::default()
    };
    let (x0, labels) = batch();
    let mut rng = TrainRng::new(seed);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let parts = diffusion_loss(&model, &schedule, &x0, Some(&labels), &cfg, &mut rng).unwrap();
        let mut grads = parts.loss.backward().unwrap();
        clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        opt.update(&grads, 2e-3).unwrap();
        losses.push(parts.loss.to_scalar::<f32>().unwrap());
    }
    losses
}

fn init_values(rng: &mut TrainRng, n: usize) -> Vec<f32> {
    // Reuse the objective's generator through a throwaway loss-free draw.
    let (seed, pos) = rng.state();
    let mut r = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    r.set_word_pos(pos);
    let v: Vec<f32> = (0..n)
        .map(|_| rand::Rng::sample(&mut r, rand_distr::StandardNormal))
        .collect();
    *rng = TrainRng::from_state(seed, r.get_word_pos());
    v
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn epsilon_and_flow_losses_fall_and_runs_repeat() {
    let edm = Some(EDM);
    for (p, edm) in [
        (PredictionType::Epsilon, None),
        (PredictionType::Flow, None),
        (PredictionType::Epsilon, edm),
    ] {
        let p = (p, edm.is_some());
        let losses = train(p.0, edm, 60, 3);
        let (first, last) = (mean(&losses[..10]), mean(&losses[50..]));
        assert!(
            last < 0.7 * first,
            "{p:?}: loss {first} → {last}: {losses:?}"
        );
        assert!(losses.iter().all(|l| l.is_finite()));
        let again = train(p.0, edm, 12, 3);
        assert_eq!(
            &losses[..12],
            &again[..],
            "{p:?}: the same seed must give the same run"
        );
    }
}

/// One loss of the tiny UNet on the MNIST batch with given noise z, from `TrainRng::new(7)`.
struct Paired {
    x0: Tensor,
    labels: Vec<u32>,
    model: Network,
    z: Tensor,
    parts: diffuse_train::objective::LossParts,
    rng: TrainRng,
}

fn paired_noise_loss(cfg: &ObjectiveConfig) -> Paired {
    let (x0, labels) = batch();
    let (model, _) = build_unet(&tiny_config(), &Device::Cpu).unwrap();
    let model = Network::from(model);
    let schedule =
        NoiseSchedule::from_config(&SchedulerConfig::default_for(SchedulerClass::Ddpm)).unwrap();
    let z = Tensor::randn(0f32, 1.0, x0.shape(), &Device::Cpu).unwrap();
    let mut rng = TrainRng::new(7);
    let parts = diffusion_loss_with_noise(
        &model,
        &schedule,
        &x0,
        Some(&z),
        Some(&labels),
        cfg,
        &mut rng,
    )
    .unwrap();
    Paired {
        x0,
        labels,
        model,
        z,
        parts,
        rng,
    }
}

const EDM: EdmTraining = EdmTraining {
    precond: diffuse_core::edm::Precond {
        sigma_data: 0.5,
        negate_out: false,
    },
    p_mean: -1.2,
    p_std: 1.2,
};

/// EDM's loss (Karras et al. 2022, eq. 2 with Table 1's preconditioning), by hand from the same
/// stream: ln σ ~ N(−1.2, 1.2²), D = c_skip x_σ + c_out F(c_in x_σ, ¼ ln σ), loss = mean over
/// samples of λ(σ)·mean‖D − x₀‖² with λ = (σ² + σ_d²)/(σ σ_d)².
#[test]
fn edm_loss_is_the_lambda_weighted_denoiser_loss() {
    let cfg = ObjectiveConfig {
        edm: Some(EDM),
        cond_dropout: 0.0,
        ..Default::default()
    };
    let Paired {
        x0,
        labels,
        model,
        z,
        parts,
        ..
    } = paired_noise_loss(&cfg);
    let mut r = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
    let sigmas: Vec<f64> = (0..8)
        .map(|_| {
            let n: f64 = rand::Rng::sample(&mut r, rand_distr::StandardNormal);
            (-1.2 + 1.2 * n).exp()
        })
        .collect();
    let sd = 0.5f64;
    let mut want = 0.0;
    let label_t = Tensor::from_vec(labels.clone(), 8, &Device::Cpu).unwrap();
    for (i, &s) in sigmas.iter().enumerate() {
        let x = (x0.get(i).unwrap() + (z.get(i).unwrap() * s).unwrap()).unwrap();
        let c_in = 1.0 / (s * s + sd * sd).sqrt();
        let t = (0.25 * s.ln()) as f32;
        assert!((parts.timesteps[i] - t).abs() < 1e-6);
        let f = model
            .predict(
                &(&x * c_in).unwrap().unsqueeze(0).unwrap(),
                &[t],
                Some(&label_t.narrow(0, i, 1).unwrap()),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let (c_skip, c_out) = (
            sd * sd / (s * s + sd * sd),
            s * sd / (s * s + sd * sd).sqrt(),
        );
        let d = ((&x * c_skip).unwrap() + (f * c_out).unwrap()).unwrap();
        let mse = (d - x0.get(i).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        want += (s * s + sd * sd) / (s * sd).powi(2) * mse / 8.0;
    }
    let got = parts.loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - want).abs() <= 1e-4 * want,
        "loss {got} vs by hand {want}"
    );
}

#[test]
fn rng_state_resumes_the_stream() {
    let mut a = TrainRng::new(9);
    let (x0, labels) = batch();
    let (model, _) = build_unet(&tiny_config(), &Device::Cpu).unwrap();
    let model = Network::from(model);
    let schedule =
        NoiseSchedule::from_config(&SchedulerConfig::default_for(SchedulerClass::Ddpm)).unwrap();
    let cfg = ObjectiveConfig {
        prediction: PredictionType::Epsilon,
        min_snr_gamma: None,
        cond_dropout: 0.5,
        null_class: Some(10),
        sigma_sampling: SigmaSampling::Uniform,
        ..Default::default()
    };
    diffusion_loss(&model, &schedule, &x0, Some(&labels), &cfg, &mut a).unwrap();
    let (seed, pos) = a.state();
    let mut b = TrainRng::from_state(seed, pos);
    let la = diffusion_loss(&model, &schedule, &x0, Some(&labels), &cfg, &mut a).unwrap();
    let lb = diffusion_loss(&model, &schedule, &x0, Some(&labels), &cfg, &mut b).unwrap();
    assert_eq!(la.timesteps, lb.timesteps);
    assert_eq!(
        la.loss.to_scalar::<f32>().unwrap(),
        lb.loss.to_scalar::<f32>().unwrap()
    );
}

/// Reflow's loss: with the noise z given, ‖v_θ(x_σ, T·σ) − (z − x₀)‖² at x_σ = (1 − σ)x₀ + σz,
/// σ drawn (and shifted) as configured; the stream is not used for noise.
#[test]
fn paired_noise_flow_loss_is_the_reflow_objective() {
    let cfg = ObjectiveConfig {
        prediction: PredictionType::Flow,
        sigma_sampling: SigmaSampling::Uniform,
        flow_shift: 3.0,
        flow_num_train_timesteps: 1000,
        ..Default::default()
    };
    let Paired {
        x0,
        labels,
        model,
        z,
        parts,
        mut rng,
    } = paired_noise_loss(&cfg);
    // By hand, from the same stream: only the σ draws are consumed.
    let mut r = TrainRng::new(7);
    let sigmas = draw_flow_sigmas(SigmaSampling::Uniform, 3.0, 8, &mut r);
    assert_eq!(r.state(), rng.state());
    let t: Vec<f32> = sigmas.iter().map(|s| s * 1000.0).collect();
    assert_eq!(parts.timesteps, t);
    let s = Tensor::from_vec(sigmas.clone(), (8, 1, 1, 1), &Device::Cpu).unwrap();
    let x_t =
        (x0.broadcast_mul(&(1.0 - &s).unwrap()).unwrap() + z.broadcast_mul(&s).unwrap()).unwrap();
    let label_t = Tensor::from_vec(labels.clone(), 8, &Device::Cpu).unwrap();
    let pred = model.predict(&x_t, &t, Some(&label_t)).unwrap();
    let want = (pred - (&z - &x0).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let got = parts.loss.to_scalar::<f32>().unwrap();
    assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
    // A noise tensor of the wrong shape is refused.
    let bad = z.narrow(0, 0, 4).unwrap();
    let schedule =
        NoiseSchedule::from_config(&SchedulerConfig::default_for(SchedulerClass::Ddpm)).unwrap();
    let e = diffusion_loss_with_noise(&model, &schedule, &x0, Some(&bad), None, &cfg, &mut rng)
        .err()
        .unwrap();
    assert!(e.to_string().contains("paired noise"), "{e}");
}

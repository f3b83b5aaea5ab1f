//! A tiny class-conditional UNet learns: the loss on a fixed MNIST batch falls under AdamW, for
//! the ε and the flow-matching objectives; runs are bitwise repeatable and the RNG resumes.

use candle_core::{Device, Tensor, Var};
use diffuse_core::config::{PredictionType, SchedulerClass, SchedulerConfig};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_data::datasets::{Dataset, IdxDataset};
use diffuse_data::transform::{Fit, Transform};
use diffuse_models::weights::build_unet;
use diffuse_models::{DenoiserNet, UNet2DConfig};
use diffuse_train::objective::{diffusion_loss, ObjectiveConfig, SigmaSampling, TrainRng};
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

fn train(prediction: PredictionType, steps: usize, seed: u64) -> Vec<f32> {
    let dev = Device::Cpu;
    let (model, varmap) = build_unet(&tiny_config(), &dev).unwrap();
    let model = DenoiserNet::from(model);
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
        min_snr_gamma: if prediction == PredictionType::Epsilon {
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
    for p in [PredictionType::Epsilon, PredictionType::Flow] {
        let losses = train(p, 60, 3);
        let (first, last) = (mean(&losses[..10]), mean(&losses[50..]));
        assert!(
            last < 0.7 * first,
            "{p:?}: loss {first} → {last}: {losses:?}"
        );
        assert!(losses.iter().all(|l| l.is_finite()));
        let again = train(p, 12, 3);
        assert_eq!(
            &losses[..12],
            &again[..],
            "{p:?}: the same seed must give the same run"
        );
    }
}

#[test]
fn rng_state_resumes_the_stream() {
    let mut a = TrainRng::new(9);
    let (x0, labels) = batch();
    let (model, _) = build_unet(&tiny_config(), &Device::Cpu).unwrap();
    let model = DenoiserNet::from(model);
    let schedule =
        NoiseSchedule::from_config(&SchedulerConfig::default_for(SchedulerClass::Ddpm)).unwrap();
    let cfg = ObjectiveConfig {
        prediction: PredictionType::Epsilon,
        min_snr_gamma: None,
        cond_dropout: 0.5,
        null_class: Some(10),
        sigma_sampling: SigmaSampling::Uniform,
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

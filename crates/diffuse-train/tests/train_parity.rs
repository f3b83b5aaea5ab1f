//! AdamW, clipping, LR schedules and EMA against torch 2.15 / diffusers 0.42.1
//! (`tools/fixtures/gen_train.py`).

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use diffuse_train::ema::{Ema, EmaConfig};
use diffuse_train::lr::LrSchedule;
use diffuse_train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use serde_json::Value;

fn fixture() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/train.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    assert!(v["provenance"]["torch"].is_string());
    v
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn close(what: &str, got: &Tensor, want: &[f32], rtol: f32) {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= rtol * b.abs().max(1e-3),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn adamw_clipping_cosine_and_ema_match_torch() {
    let f = fixture();
    let a = &f["adamw"];
    let dev = Device::Cpu;
    let p1 = Var::from_vec(floats(&a["init"]["p1"]), (3, 4), &dev).unwrap();
    let p2 = Var::from_vec(floats(&a["init"]["p2"]), 5, &dev).unwrap();
    let vars = vec![
        ("p1".to_string(), p1.clone()),
        ("p2".to_string(), p2.clone()),
    ];
    let betas = floats(&a["betas"]);
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            beta1: betas[0] as f64,
            beta2: betas[1] as f64,
            eps: a["eps"].as_f64().unwrap(),
            weight_decay: a["weight_decay"].as_f64().unwrap(),
        },
    )
    .unwrap();
    let sched = LrSchedule::parse(
        "cosine",
        a["warmup"].as_u64().unwrap(),
        a["total"].as_u64().unwrap(),
    )
    .unwrap();
    let e = &a["ema"];
    let mut ema = Ema::new(
        &[p1.clone(), p2.clone()],
        EmaConfig {
            decay: e["decay"].as_f64().unwrap(),
            inv_gamma: e["inv_gamma"].as_f64().unwrap(),
            power: e["power"].as_f64().unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let base_lr = a["lr"].as_f64().unwrap();
    for (k, s) in a["steps"].as_array().unwrap().iter().enumerate() {
        // Gradients as a backward pass would leave them: d/dp Σ p·g = g.
        let g1 = Tensor::from_vec(floats(&s["grads"]["p1"]), (3, 4), &dev).unwrap();
        let g2 = Tensor::from_vec(floats(&s["grads"]["p2"]), 5, &dev).unwrap();
        let loss = ((p1.as_tensor() * &g1).unwrap().sum_all().unwrap()
            + (p2.as_tensor() * &g2).unwrap().sum_all().unwrap())
        .unwrap();
        let mut grads: GradStore = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut grads, &vars, a["max_norm"].as_f64().unwrap()).unwrap();
        let want_norm = s["total_norm"].as_f64().unwrap();
        assert!(
            (norm - want_norm).abs() <= 1e-5 * want_norm,
            "step {k}: norm {norm} vs {want_norm}"
        );
        let lr = base_lr * sched.factor(k as u64);
        assert!(
            (lr - s["lr"].as_f64().unwrap()).abs() <= 1e-12,
            "step {k} lr"
        );
        opt.update(&grads, lr).unwrap();
        ema.step(&[p1.clone(), p2.clone()]).unwrap();
        close(
            &format!("step {k} p1"),
            p1.as_tensor(),
            &floats(&s["params"]["p1"]),
            1e-5,
        );
        close(
            &format!("step {k} p2"),
            p2.as_tensor(),
            &floats(&s["params"]["p2"]),
            1e-5,
        );
        assert!((ema.last_decay - s["ema_decay"].as_f64().unwrap()).abs() < 1e-12);
        close(
            &format!("step {k} ema p1"),
            &ema.shadow()[0],
            &floats(&s["ema"]["p1"]),
            1e-5,
        );
        close(
            &format!("step {k} ema p2"),
            &ema.shadow()[1],
            &floats(&s["ema"]["p2"]),
            1e-5,
        );
    }
    // Moments and shadows hold no backward graph (else every step's activations stay alive).
    assert!(opt.state().iter().all(|(_, t)| !t.track_op()));
    assert!(ema.shadow().iter().all(|t| !t.track_op()));
    // Saved moments restore the same next update.
    let state: std::collections::HashMap<_, _> = opt.state().into_iter().collect();
    let mut again = AdamW::new(vars.clone(), opt.config).unwrap();
    again.load_state(&state, opt.step).unwrap();
    assert_eq!(again.step, 6);
}

#[test]
fn lr_curves_match_diffusers() {
    let f = fixture();
    for (name, curve) in f["lr_curves"].as_object().unwrap() {
        let s = LrSchedule::parse(name, 3, 10).unwrap();
        for (k, want) in curve.as_array().unwrap().iter().enumerate() {
            let got = s.factor(k as u64);
            assert!(
                (got - want.as_f64().unwrap()).abs() < 1e-12,
                "{name} step {k}: {got} vs {want}"
            );
        }
    }
    assert!(LrSchedule::parse("polynomial", 0, 1).is_err());
}

#[test]
fn ema_without_warmup_matches_diffusers() {
    let f = fixture();
    let e = &f["ema_no_warmup"];
    let ema = Ema::new(
        &[],
        EmaConfig {
            decay: e["decay"].as_f64().unwrap(),
            update_after_step: e["update_after_step"].as_u64().unwrap(),
            use_ema_warmup: false,
            ..Default::default()
        },
    )
    .unwrap();
    for (k, want) in e["decays"].as_array().unwrap().iter().enumerate() {
        assert!(
            (ema.decay(k as u64) - want.as_f64().unwrap()).abs() < 1e-12,
            "step {k}"
        );
    }
}

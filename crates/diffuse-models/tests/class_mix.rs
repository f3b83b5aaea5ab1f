//! Soft class labels (weights over the classes mix their embeddings): a one-hot row is the
//! hard label, for the UNet's class table and the DiT's; interpolation frames end on the two
//! classes, guided or not.

mod common;
use common::{fixtures, max_abs_err};

use candle_core::{DType, Device, Tensor};
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_models::pipeline::{class_weights_between, generate, GenerateOptions};
use diffuse_models::weights::load_net;

fn one_hot(labels: &[u32], k: usize) -> Tensor {
    let v: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..k).map(move |i| f32::from(i == l as usize)))
        .collect();
    Tensor::from_vec(v, (labels.len(), k), &Device::Cpu).unwrap()
}

fn noise(shape: (usize, usize, usize, usize)) -> Tensor {
    SeededNoise::new(3, shape.0)
        .randn(&shape.into(), DType::F32, &Device::Cpu)
        .unwrap()
}

#[test]
fn one_hot_weights_are_the_labels_for_unet_and_dit() {
    for (dir, c, s) in [("unet_class_cond", 1, 8), ("dit_p2_rgb", 3, 12)] {
        let (net, _) = load_net(&fixtures().join(dir), &Device::Cpu).unwrap();
        let k = net.num_classes().unwrap();
        let x = noise((3, c, s, s));
        let labels = [0u32, 3, k as u32 - 1];
        let hard = Tensor::new(&labels, &Device::Cpu).unwrap();
        let a = net.predict(&x, &[500.0], Some(&hard)).unwrap();
        let b = net
            .predict(&x, &[500.0], Some(&one_hot(&labels, k)))
            .unwrap();
        assert!(max_abs_err(&a, &b) < 1e-5, "{dir}: one-hot ≠ label");
        // Half of class 0 and half of class 3 is neither.
        let mix = ((one_hot(&[0], k) + one_hot(&[3], k)).unwrap() * 0.5).unwrap();
        let m = net
            .predict(&x.narrow(0, 0, 1).unwrap(), &[500.0], Some(&mix))
            .unwrap();
        assert!(max_abs_err(&m, &a.narrow(0, 0, 1).unwrap()) > 1e-4, "{dir}");
        assert!(max_abs_err(&m, &a.narrow(0, 1, 1).unwrap()) > 1e-4, "{dir}");
        // Wrong widths are refused.
        let e = net.predict(&x, &[500.0], Some(&one_hot(&labels, k - 1)));
        assert!(
            e.unwrap_err().to_string().contains("class weights"),
            "{dir}"
        );
    }
}

#[test]
fn interpolation_frames_end_on_the_two_classes() {
    let (net, _) = load_net(&fixtures().join("unet_class_cond"), &Device::Cpu).unwrap();
    let k = net.num_classes().unwrap();
    let cfg = diffuse_core::config::SchedulerConfig::default_for(
        diffuse_core::config::SchedulerClass::Ddim,
    );
    let sampler = diffuse_core::sampler::Sampler::new(&cfg, 4).unwrap();
    let x_t = noise((1, 1, 8, 8)).repeat((5, 1, 1, 1)).unwrap();
    let run = |labels: Option<Vec<u32>>, weights: Option<Tensor>, g: f64| {
        let opts = GenerateOptions {
            num_images: 5,
            size: (8, 8),
            class_labels: labels,
            class_weights: weights,
            guidance_scale: g,
            initial_noise: Some(x_t.clone()),
            ..Default::default()
        };
        generate(&net, &sampler, &opts, &Device::Cpu, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap()
    };
    for g in [1.0, 2.5] {
        let w = class_weights_between(k, 2, 7, 5, &Device::Cpu).unwrap();
        let mixed = run(None, Some(w), g);
        let two = run(Some(vec![2]), None, g);
        let seven = run(Some(vec![7]), None, g);
        let row = |t: &Tensor, i| t.narrow(0, i, 1).unwrap();
        assert!(
            max_abs_err(&row(&mixed, 0), &row(&two, 0)) < 1e-4,
            "guidance {g}"
        );
        assert!(
            max_abs_err(&row(&mixed, 4), &row(&seven, 0)) < 1e-4,
            "guidance {g}"
        );
        assert!(
            max_abs_err(&row(&mixed, 2), &row(&two, 0)) > 1e-3,
            "guidance {g}"
        );
    }
    // Labels and weights together, or weights for a model without a class table, are refused.
    let w = class_weights_between(k, 2, 7, 5, &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        num_images: 5,
        size: (8, 8),
        class_labels: Some(vec![1]),
        class_weights: Some(w),
        ..Default::default()
    };
    let e = generate(&net, &sampler, &opts, &Device::Cpu, &mut |_| {
        std::ops::ControlFlow::Continue(())
    });
    assert!(e.unwrap_err().to_string().contains("not both"));
    assert!(class_weights_between(k, 2, k as u32, 5, &Device::Cpu).is_err());
}

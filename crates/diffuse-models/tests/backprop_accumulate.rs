//! candle's backprop as patched in `third_party/candle-core` (see `third_party/README.md`): a
//! gradient's first contribution is stored as it is instead of being added to a zero-filled
//! buffer. These check that every way a gradient arrives still sums to the right value and that
//! the stored gradients are contiguous (the in-place optimizer passes need that).

use candle_core::{Device, Tensor, Var};

fn close(got: &Tensor, want: &[f32]) {
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{i}: {g} vs {w}");
    }
}

#[test]
fn gradients_sum_over_every_use_and_are_stored_contiguous() {
    let dev = Device::Cpu;
    // a [2, 3], b [3, 2]: values 1..6 and 0.5..3
    let a = Var::from_vec((1..=6).map(|v| v as f32).collect(), (2, 3), &dev).unwrap();
    let b = Var::from_vec((1..=6).map(|v| v as f32 * 0.5).collect(), (3, 2), &dev).unwrap();
    // A tensor used on both sides of an add, by a sub (the negated path), transposed (a strided
    // first contribution), broadcast from a keepdim sum, and through a cat and narrow.
    let bt = b.t().unwrap(); // [2, 3]
    let s = (a.as_tensor() + a.as_tensor()).unwrap(); // 2a
    let d = (&s - &bt).unwrap(); // 2a − bᵀ
    let r = a.sum_keepdim(1).unwrap().broadcast_as((2, 3)).unwrap(); // row sums of a
    let c = Tensor::cat(&[&d, &r], 1).unwrap(); // [2, 6]
    let picked = c.narrow(1, 1, 4).unwrap(); // columns 1..5 of the cat
    let w = Tensor::from_vec((1..=8).map(|v| v as f32).collect(), (2, 4), &dev).unwrap();
    let loss = (picked * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();

    // dL/dc[i][1 + k] = w[i][k]; columns 1, 2 of d, columns 0, 1 of r.
    // d = 2a − bᵀ: da += 2·w on d's columns 1, 2; db[j][i] −= w on them.
    // r[i][j] = Σ_k a[i][k]: da[i][*] += Σ over r's picked columns of w.
    let (w0, w1) = ([1., 2., 3., 4.], [5., 6., 7., 8.]);
    let ra = [w0[2] + w0[3], w1[2] + w1[3]];
    let want_a = [
        ra[0],
        2. * w0[0] + ra[0],
        2. * w0[1] + ra[0],
        ra[1],
        2. * w1[0] + ra[1],
        2. * w1[1] + ra[1],
    ];
    let want_b = [0., 0., -w0[0], -w1[0], -w0[1], -w1[1]];
    let (ga, gb) = (grads.get(&a).unwrap(), grads.get(&b).unwrap());
    close(ga, &want_a);
    close(gb, &want_b);
    assert!(ga.is_contiguous() && gb.is_contiguous());
    assert_eq!(gb.dims(), &[3, 2]);
}

#[test]
fn a_single_transposed_use_stores_a_contiguous_gradient() {
    let dev = Device::Cpu;
    let a = Var::from_vec((1..=6).map(|v| v as f32).collect(), (2, 3), &dev).unwrap();
    let w = Tensor::from_vec((1..=6).map(|v| v as f32).collect(), (3, 2), &dev).unwrap();
    let loss = (a.t().unwrap() * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(&a).unwrap();
    assert!(g.is_contiguous());
    // dL/da[i][j] = w[j][i]
    close(g, &[1., 3., 5., 2., 4., 6.]);
}

#[test]
fn the_patch_is_in_effect_first_contributions_are_not_copied() {
    // Both sides of an add receive the output's gradient itself: one tensor, no zero-filled
    // buffer added into. (Upstream candle gives each side its own `zeros + grad`.)
    let dev = Device::Cpu;
    let a = Var::from_vec(vec![1f32, 2., 3.], 3, &dev).unwrap();
    let b = Var::from_vec(vec![4f32, 5., 6.], 3, &dev).unwrap();
    let loss = ((a.as_tensor() + b.as_tensor()).unwrap() * 3.0)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let (ga, gb) = (grads.get(&a).unwrap(), grads.get(&b).unwrap());
    close(ga, &[3., 3., 3.]);
    assert_eq!(
        ga.id(),
        gb.id(),
        "third_party/candle-core's backprop patch is not in use"
    );
}

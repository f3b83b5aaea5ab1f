//! Which algorithm each convolution pass runs: im2col + GEMM, Winograd F(2×2, 3×3) or
//! F(4×4, 3×3), per layer shape, as cuDNN's and oneDNN's algorithm selection do.
//!
//! The choice is a pure function of the shape (and of `DIFFUSE_WINOGRAD`), so a run is
//! reproducible and a resumed run takes the same path: a rule measured on the development
//! machine (`docs/performance.md`), unless a table measured on this machine by
//! `diffuse bench --tune-convs` is in the cache (`$DIFFUSE_CONV_TABLE`, else
//! `$XDG_CACHE_HOME/diffuse/conv-table.json`, else `~/.cache/diffuse/conv-table.json`).

use super::conv2d::Geometry;
use super::winograd::Variant;

/// One pass of a convolution layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward,
    GradInput,
    GradWeight,
}

/// How a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    Im2col,
    Winograd(Variant),
}

/// `DIFFUSE_WINOGRAD`: `0` im2col everywhere, `2` F(2×2) and `4` F(4×4) wherever Winograd
/// applies; unset (or anything else): the table.
fn forced() -> Option<Option<Variant>> {
    use std::sync::OnceLock;
    static F: OnceLock<Option<Option<Variant>>> = OnceLock::new();
    *F.get_or_init(|| match std::env::var("DIFFUSE_WINOGRAD").as_deref() {
        Ok("0") => Some(None),
        Ok("2") => Some(Some(Variant::F2)),
        Ok("4") => Some(Some(Variant::F4)),
        _ => None,
    })
}

thread_local! {
    static PINNED: std::cell::Cell<Option<Algo>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every Winograd-shaped convolution on this thread taking `algo` (measuring
/// the candidates).
pub fn pinned<R>(algo: Algo, f: impl FnOnce() -> R) -> R {
    let old = PINNED.with(|p| p.replace(Some(algo)));
    let r = f();
    PINNED.with(|p| p.set(old));
    r
}

/// The algorithm for `pass` of a convolution of geometry `g`.
pub fn choose(g: &Geometry, pass: Pass) -> Algo {
    if !g.winograd_shape() {
        return Algo::Im2col;
    }
    if let Some(a) = PINNED.with(|p| p.get()) {
        return a;
    }
    match forced() {
        Some(Some(v)) => Algo::Winograd(v),
        Some(None) => Algo::Im2col,
        None => rule(g, pass),
    }
}

/// The built-in rule, from `examples/conv_algos.rs` on the 2-core development machine
/// (docs/performance.md): F(4×4) where images are large enough for its 4×4 tiles to be mostly
/// inside the image, F(2×2) below, and im2col for the gradients of 4×4 images, whose GEMMs
/// have too few columns for the α² Winograd GEMMs to pay.
fn rule(g: &Geometry, pass: Pass) -> Algo {
    let side = g.h.min(g.w);
    match pass {
        _ if side >= 24 => Algo::Winograd(Variant::F4),
        Pass::Forward if side >= 16 => Algo::Winograd(Variant::F4),
        Pass::Forward => Algo::Winograd(Variant::F2),
        _ if side > 6 => Algo::Winograd(Variant::F2),
        _ => Algo::Im2col,
    }
}

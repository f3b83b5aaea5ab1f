//! Weights transformed once for inference (as oneDNN's and ONNX Runtime's pre-packed
//! weights): the Winograd-domain filters of a convolution whose weight is not a variable and
//! whose input tracks no gradient, kept across calls instead of re-transformed per forward.
//!
//! Entries are keyed by the weight tensor's id and the tile size, and carry a 64-bit hash of the
//! weight's contents (a sample of it for large weights, `fingerprint_lanes`) that is checked on
//! every hit, so a weight changed in place (a detached
//! view of a variable that an optimizer then updated) is transformed again, never served stale.
//! The cache holds at most `CAP_BYTES`; the oldest entries go first.

use super::winograd::{prepare_weights, Variant};
use candle_core::TensorId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The most transformed weights kept (an F(4×4) filter bank is 4× its weights).
const CAP_BYTES: usize = 512 << 20;

struct Entry {
    id: TensorId,
    var: Variant,
    hash: u64,
    u: Arc<Vec<f32>>,
}

static CACHE: Mutex<VecDeque<Entry>> = Mutex::new(VecDeque::new());

/// A hash of the weight's bits: eight independent multiply–xor (FNV-1a style) chains over
/// 32-bit words, which vectorize, folded into 64 bits. Large weights are sampled: 8 words from
/// each of `PLACES` evenly spaced places (a cache line each). An in-place change of a constant
/// weight comes from an optimizer or EMA step through a detached view, and that changes every
/// element, so a sample finds it. The sample used to be one cache line in four: a quarter pass
/// over the model's weights per forward, 3.5 % of a batch-1 forward, mostly DRAM misses.
#[inline(always)]
fn fingerprint_lanes(w: &[f32]) -> u64 {
    const PRIME: u32 = 0x0100_0193;
    const PLACES: usize = 16;
    let mut h = [0x811c_9dc5u32; 8];
    for (k, hk) in h.iter_mut().enumerate() {
        *hk ^= k as u32;
    }
    let mut mix = |c: &[f32]| {
        for (k, v) in c.iter().enumerate() {
            h[k] = (h[k] ^ v.to_bits()).wrapping_mul(PRIME);
            h[k] ^= h[k] >> 15;
        }
    };
    if w.len() <= 4096 {
        w.chunks(8).for_each(&mut mix);
    } else {
        let step = (w.len() - 8) / (PLACES - 1);
        for i in 0..PLACES {
            mix(&w[i * step..][..8]); // the last place ends at or before w's end
        }
    }
    h.iter().fold(w.len() as u64, |acc, &x| {
        (acc ^ x as u64)
            .wrapping_mul(0xff51_afd7_ed55_8ccd)
            .rotate_left(29)
    })
}

crate::kernels::multiversion!(fingerprint_lanes, fingerprint_mv, fn(w: &[f32]) -> u64);

/// `prepare_weights(var, w, co, ci)`, from the cache when weight `id` was transformed
/// before with the same contents.
pub(crate) fn winograd(
    id: TensorId,
    var: Variant,
    w: &[f32],
    co: usize,
    ci: usize,
) -> Arc<Vec<f32>> {
    let hash = fingerprint_mv(w);
    {
        let cache = CACHE.lock().expect("packed-weight cache lock");
        if let Some(e) = cache
            .iter()
            .find(|e| e.id == id && e.var == var && e.hash == hash)
        {
            return e.u.clone();
        }
    }
    let u = Arc::new(prepare_weights(var, w, co, ci));
    let mut cache = CACHE.lock().expect("packed-weight cache lock");
    cache.retain(|e| !(e.id == id && e.var == var));
    let bytes = |c: &VecDeque<Entry>| c.iter().map(|e| e.u.len() * 4).sum::<usize>();
    while !cache.is_empty() && bytes(&cache) + u.len() * 4 > CAP_BYTES {
        cache.pop_front();
    }
    if u.len() * 4 <= CAP_BYTES {
        cache.push_back(Entry {
            id,
            var,
            hash,
            u: u.clone(),
        });
    }
    u
}

/// Whether weight `id` has a cache entry (tests: other tests' convolutions share the cache,
/// so they ask about their own weights, never about the entry count).
#[cfg(test)]
pub(crate) fn holds(id: TensorId) -> bool {
    CACHE.lock().unwrap().iter().any(|e| e.id == id)
}

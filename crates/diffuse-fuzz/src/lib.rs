//! Fuzz targets: every parser that reads what a user or a client hands diffuse, as a
//! `fn(&[u8])` that must return (an error value is fine) and never panic, abort, allocate
//! without bound or hang. `fuzz/` runs them under libFuzzer (`cargo fuzz`); the tests of this
//! crate replay the committed corpus and regressions (`fuzz/corpus`, `fuzz/regressions`) and a
//! bounded number of seeded mutations of them ([`mutate`]) on every CI run.

pub mod targets;

use rand::{Rng, RngCore};

/// A target: its name (the folder under `fuzz/corpus/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("safetensors", targets::safetensors),
    ("pickle", targets::pickle),
    ("config_json", targets::config_json),
    ("tokenizer", targets::tokenizer),
    ("train_toml", targets::train_toml),
    ("image", targets::image),
    ("idx", targets::idx),
    ("cifar", targets::cifar),
    ("onnx_roundtrip", targets::onnx_roundtrip),
    ("serve_body", targets::serve_body),
    ("serve_form", targets::serve_form),
];

/// Bytes that break parsers: bounds, signs, NaN and Infinity spelt out, digits.
const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e309",
    b"NaN",
    b"-Infinity",
    b"4294967295",
    b"18446744073709551616",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
    b"\"",
    b"[",
    b"{",
    b"}",
    b"\n",
    b"null",
    b"99999999999",
];

/// One random mutation of `data` (libFuzzer's simplest moves): flip a bit, set a byte, insert
/// or delete a run, copy a run within, splice from `other`, or insert an interesting token.
pub fn mutate(rng: &mut impl RngCore, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    let n = rng.random_range(1..=4);
    for _ in 0..n {
        let len = d.len();
        let at = |rng: &mut dyn RngCore, n: usize| if n == 0 { 0 } else { rng.random_range(0..n) };
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = at(rng, len);
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = at(rng, len);
                d[i] = rng.random();
            }
            2 => {
                let i = at(rng, len + 1);
                let k = rng.random_range(1..=16);
                let run: Vec<u8> = (0..k).map(|_| rng.random()).collect();
                d.splice(i..i, run);
            }
            3 if len > 0 => {
                let i = at(rng, len);
                let k = rng.random_range(1..=(len - i).min(64));
                d.drain(i..i + k);
            }
            4 if len > 1 => {
                let (i, j) = (at(rng, len), at(rng, len));
                let k = rng.random_range(1..=(len - i.max(j)).min(64));
                let run = d[i..i + k].to_vec();
                d.splice(j..j, run);
            }
            5 if !other.is_empty() => {
                let i = at(rng, other.len());
                let k = rng.random_range(1..=(other.len() - i).min(256));
                let j = at(rng, len + 1);
                d.splice(j..j, other[i..i + k].iter().copied());
            }
            _ => {
                let tok = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let i = at(rng, len + 1);
                let k = rng.random_range(0..=(len - i).min(tok.len()));
                d.splice(i..i + k, tok.iter().copied());
            }
        }
    }
    d
}

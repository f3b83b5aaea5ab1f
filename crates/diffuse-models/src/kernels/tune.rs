//! Which algorithm each convolution pass runs: im2col + GEMM, Winograd F(2×2, 3×3) or
//! F(4×4, 3×3), per layer shape, as cuDNN's and oneDNN's algorithm selection do.
//!
//! The choice is a pure function of the shape, the thread count and two inputs read once per
//! process, so a run is reproducible and a resumed run takes the same path:
//! 1. `DIFFUSE_WINOGRAD=0|2|4` forces im2col, F(2×2) or F(4×4) wherever Winograd applies;
//! 2. else the table measured on this machine by `diffuse bench --tune-convs` (`measure`,
//!    written to `$DIFFUSE_CONV_TABLE`, else `$XDG_CACHE_HOME/diffuse/conv-table.json`, else
//!    `~/.cache/diffuse/conv-table.json`), for the shapes it holds;
//! 3. else `rule`, measured once on the development machine (`docs/performance.md`).

use super::conv2d::Geometry;
use super::winograd::Variant;

/// One pass of a convolution layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Pass {
    Forward,
    GradInput,
    GradWeight,
}

/// How a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
    RECORDING.with(|r| {
        if let Some(seen) = r.borrow_mut().as_mut() {
            if !seen.contains(&(*g, pass)) {
                seen.push((*g, pass));
            }
        }
    });
    match forced() {
        Some(Some(v)) => Algo::Winograd(v),
        Some(None) => Algo::Im2col,
        None => table()
            .and_then(|t| t.lookup(g, pass, super::threads()))
            .unwrap_or_else(|| rule(g, pass)),
    }
}

thread_local! {
    static RECORDING: std::cell::RefCell<Option<Vec<(Geometry, Pass)>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns, beside its result, every (shape, pass) of a Winograd-shaped
/// convolution that it ran on this thread.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<(Geometry, Pass)>) {
    RECORDING.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let seen = RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    (out, seen)
}

/// This thread's pinned algorithm and shape recording. [`super::on_pool`] carries them onto the
/// pool thread that runs a model's forward, and brings the recording back.
pub(crate) struct Context {
    pinned: Option<Algo>,
    recording: Option<Vec<(Geometry, Pass)>>,
}

impl Context {
    /// Takes this thread's context, leaving none.
    pub(crate) fn take() -> Self {
        Context {
            pinned: PINNED.with(|p| p.replace(None)),
            recording: RECORDING.with(|r| r.borrow_mut().take()),
        }
    }

    /// Makes `self` this thread's context.
    pub(crate) fn install(self) {
        PINNED.with(|p| p.set(self.pinned));
        RECORDING.with(|r| *r.borrow_mut() = self.recording);
    }
}

/// One measured choice: the fastest algorithm for a pass of one shape at a thread count, and
/// the median milliseconds of each candidate (im2col, F(2×2), F(4×4)).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub pass: Pass,
    pub b: usize,
    pub ci: usize,
    pub co: usize,
    pub h: usize,
    pub w: usize,
    pub threads: usize,
    pub algo: Algo,
    pub ms: [f64; 3],
}

/// The table `diffuse bench --tune-convs` measures and writes.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Table {
    pub cpu: String,
    pub entries: Vec<Entry>,
}

impl Table {
    /// The measured algorithm for exactly this pass, shape and thread count.
    pub fn lookup(&self, g: &Geometry, pass: Pass, threads: usize) -> Option<Algo> {
        self.entries
            .iter()
            .find(|e| {
                e.pass == pass
                    && (e.b, e.ci, e.co, e.h, e.w, e.threads)
                        == (g.b, g.ci, g.co, g.h, g.w, threads)
            })
            .map(|e| e.algo)
    }
    /// Adds `new`, replacing entries for the same pass, shape and thread count.
    pub fn merge(&mut self, new: Vec<Entry>) {
        for e in new {
            self.entries.retain(|x| {
                (x.pass, x.b, x.ci, x.co, x.h, x.w, x.threads)
                    != (e.pass, e.b, e.ci, e.co, e.h, e.w, e.threads)
            });
            self.entries.push(e);
        }
    }
}

/// Merges `entries` into the table file at `path` (a missing or unreadable one starts empty)
/// with `cpu` named, and writes it atomically; returns the table's entry count.
pub fn save(entries: Vec<Entry>, cpu: &str, path: &std::path::Path) -> crate::Result<usize> {
    let mut table = read_table(path).unwrap_or_default();
    table.cpu = cpu.to_string();
    table.merge(entries);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(crate::Error::io(dir))?;
    }
    let text = serde_json::to_string_pretty(&table).expect("a table serializes");
    diffuse_data::fs::write_atomic(path, text.as_bytes())
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    Ok(table.entries.len())
}

/// `entries` as a markdown table: each candidate's time and the one chosen.
pub fn markdown(entries: &[Entry]) -> String {
    let mut s = String::from(
        "| pass | b | ci→co | h×w | threads | im2col ms | F(2×2) ms | F(4×4) ms | chosen |\n\
         |---|---:|---|---|---:|---:|---:|---:|---|\n",
    );
    for e in entries {
        let chosen = match e.algo {
            Algo::Im2col => "im2col".to_string(),
            Algo::Winograd(v) => format!("F({0}×{0}, 3×3)", v.tile()),
        };
        s.push_str(&format!(
            "| {:?} | {} | {}→{} | {}×{} | {} | {:.3} | {:.3} | {:.3} | {chosen} |\n",
            e.pass, e.b, e.ci, e.co, e.h, e.w, e.threads, e.ms[0], e.ms[1], e.ms[2]
        ));
    }
    s
}

/// Where the measured table lives: `$DIFFUSE_CONV_TABLE`, else the user's cache directory.
pub fn table_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("DIFFUSE_CONV_TABLE") {
        return Some(p.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(cache.join("diffuse").join("conv-table.json"))
}

/// Reads a table file.
pub fn read_table(path: &std::path::Path) -> crate::Result<Table> {
    let text = std::fs::read_to_string(path).map_err(crate::Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| {
        crate::Error::Config(format!(
            "{}: not a convolution table ({e}); remove it or rerun `diffuse bench --tune-convs`",
            path.display()
        ))
    })
}

/// The measured table, read once; an unreadable one is reported once on stderr and ignored.
fn table() -> Option<&'static Table> {
    use std::sync::OnceLock;
    static T: OnceLock<Option<Table>> = OnceLock::new();
    T.get_or_init(|| {
        let path = table_path()?;
        if !path.exists() {
            return None;
        }
        match read_table(&path) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("diffuse: ignoring the convolution table: {e}");
                None
            }
        }
    })
    .as_ref()
}

/// Times every candidate for each recorded (shape, pass) on `threads`, `runs` timed runs after
/// one warm-up, and keeps the fastest. The forward is timed with prepared (packed) Winograd
/// weights, as inference runs it; the two gradients together, one algorithm for both, as a
/// training step runs them (the entry is written for both passes).
pub fn measure(shapes: &[(Geometry, Pass)], runs: usize) -> Vec<Entry> {
    use super::winograd::{conv3x3, prepare_weights};
    let threads = super::threads();
    let median = |mut f: Box<dyn FnMut() + '_>| -> f64 {
        f();
        let mut t: Vec<f64> = (0..runs.max(1))
            .map(|_| {
                let s = std::time::Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let candidates = [
        Algo::Im2col,
        Algo::Winograd(Variant::F2),
        Algo::Winograd(Variant::F4),
    ];
    let mut out = Vec::new();
    let mut done: Vec<(Geometry, bool)> = Vec::new();
    for &(g, pass) in shapes {
        let forward = pass == Pass::Forward;
        if !g.winograd_shape() || done.contains(&(g, forward)) {
            continue;
        }
        done.push((g, forward));
        let x: Vec<f32> = (0..g.b * g.ci * g.h * g.w)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
            .collect();
        let wt: Vec<f32> = (0..g.co * g.ci * 9)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.01)
            .collect();
        let dy: Vec<f32> = (0..g.b * g.co * g.h * g.w)
            .map(|i| ((i % 5) as f32 - 2.0) * 0.1)
            .collect();
        let bias = vec![0f32; g.co];
        let mut ms = [0f64; 3];
        for (slot, &algo) in ms.iter_mut().zip(&candidates) {
            *slot = match (forward, algo) {
                (true, Algo::Winograd(v)) => {
                    let u = prepare_weights(v, &wt, g.co, g.ci);
                    median(Box::new(|| {
                        let y = conv3x3(v, &x, &u, Some(&bias), g.b, g.ci, g.co, g.h, g.w, threads);
                        std::hint::black_box(y);
                    }))
                }
                (true, Algo::Im2col) => pinned(algo, || {
                    median(Box::new(|| {
                        std::hint::black_box(super::conv2d::forward(&x, &wt, &bias, &g));
                    }))
                }),
                (false, _) => pinned(algo, || {
                    median(Box::new(|| {
                        std::hint::black_box(super::conv2d::backward(&x, &wt, &dy, &g));
                    }))
                }),
            };
        }
        let best = (0..3)
            .min_by(|&a, &b| ms[a].total_cmp(&ms[b]))
            .expect("three candidates");
        let passes: &[Pass] = if forward {
            &[Pass::Forward]
        } else {
            &[Pass::GradInput, Pass::GradWeight]
        };
        for &p in passes {
            out.push(Entry {
                pass: p,
                b: g.b,
                ci: g.ci,
                co: g.co,
                h: g.h,
                w: g.w,
                threads,
                algo: candidates[best],
                ms,
            });
        }
    }
    out
}

/// The built-in rule, from `examples/conv_algos.rs` at batch 1, 16 and 32 on the 2-core
/// development machine (docs/performance.md, "Fourth pass"), by the batch's F(4×4) tile count
/// `t` (F(4×4)'s transforms fill their lanes across a group's images, so t, not the image
/// size alone, says whether its 4× fewer multiplies pay):
/// - im2col for a layer with ≤ 4 input or output channels (the image layers `conv_in` and
///   `conv_out`), whose Winograd transforms cost more than their tiny GEMMs;
/// - forward: F(4×4) from 16 tiles (a 16 px image, or 4 px images at batch 16), else F(2×2)
///   above 4 px and im2col at 4 px;
/// - weight gradient from 128 tiles (8 px at batch 32), input gradient from 256 (the input
///   gradient also transforms its flipped weights every call); F(2×2) below that above 6 px,
///   and im2col for 4 × 4 images, whose GEMMs have too few columns to pay.
pub fn rule(g: &Geometry, pass: Pass) -> Algo {
    let side = g.h.min(g.w);
    let tiles = g.b * g.h.div_ceil(4) * g.w.div_ceil(4);
    let f4_from = match pass {
        Pass::Forward => 16,
        Pass::GradWeight => 128,
        Pass::GradInput => 256,
    };
    match pass {
        _ if g.ci.min(g.co) <= 4 => Algo::Im2col,
        Pass::Forward if side >= 4 && tiles >= f4_from => Algo::Winograd(Variant::F4),
        Pass::Forward if side > 4 => Algo::Winograd(Variant::F2),
        Pass::Forward => Algo::Im2col,
        _ if side > 6 && tiles >= f4_from => Algo::Winograd(Variant::F4),
        _ if side > 6 => Algo::Winograd(Variant::F2),
        _ => Algo::Im2col,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(b: usize, ci: usize, co: usize, hw: usize) -> Geometry {
        Geometry::new(&[b, ci, hw, hw], &[co, ci, 3, 3], 1, 1).unwrap()
    }

    #[test]
    fn rule_by_shape_and_pass() {
        let f4 = Algo::Winograd(Variant::F4);
        let f2 = Algo::Winograd(Variant::F2);
        assert_eq!(rule(&geo(1, 64, 64, 32), Pass::Forward), f4);
        assert_eq!(rule(&geo(32, 64, 64, 32), Pass::GradWeight), f4);
        assert_eq!(rule(&geo(32, 128, 128, 16), Pass::Forward), f4);
        assert_eq!(rule(&geo(32, 128, 128, 16), Pass::GradInput), f4);
        assert_eq!(rule(&geo(1, 64, 64, 32), Pass::GradInput), f2);
        assert_eq!(rule(&geo(32, 128, 128, 8), Pass::GradWeight), f4);
        assert_eq!(rule(&geo(32, 128, 128, 8), Pass::GradInput), f2);
        assert_eq!(rule(&geo(16, 128, 128, 8), Pass::Forward), f4);
        assert_eq!(rule(&geo(1, 128, 128, 8), Pass::Forward), f2);
        assert_eq!(rule(&geo(1, 64, 64, 4), Pass::Forward), Algo::Im2col);
        assert_eq!(rule(&geo(16, 64, 64, 4), Pass::Forward), f4);
        assert_eq!(rule(&geo(32, 64, 64, 4), Pass::GradWeight), Algo::Im2col);
        assert_eq!(rule(&geo(32, 1, 64, 32), Pass::Forward), Algo::Im2col);
        assert_eq!(rule(&geo(32, 64, 3, 32), Pass::GradInput), Algo::Im2col);
        // Not Winograd-shaped: im2col whatever the rule says.
        let strided = Geometry::new(&[1, 64, 32, 32], &[64, 64, 3, 3], 2, 1).unwrap();
        assert_eq!(choose(&strided, Pass::Forward), Algo::Im2col);
    }

    #[test]
    fn a_table_answers_for_its_shapes_and_merges_by_key() {
        let entry = |pass, b, algo| Entry {
            pass,
            b,
            ci: 64,
            co: 64,
            h: 32,
            w: 32,
            threads: 2,
            algo,
            ms: [1.0, 2.0, 3.0],
        };
        let mut t = Table::default();
        t.merge(vec![entry(Pass::Forward, 8, Algo::Im2col)]);
        t.merge(vec![
            entry(Pass::Forward, 8, Algo::Winograd(Variant::F2)),
            entry(Pass::GradWeight, 8, Algo::Im2col),
        ]);
        assert_eq!(t.entries.len(), 2, "same key replaced");
        let g = geo(8, 64, 64, 32);
        assert_eq!(
            t.lookup(&g, Pass::Forward, 2),
            Some(Algo::Winograd(Variant::F2))
        );
        assert_eq!(t.lookup(&g, Pass::GradWeight, 2), Some(Algo::Im2col));
        assert_eq!(t.lookup(&g, Pass::Forward, 4), None, "another thread count");
        assert_eq!(t.lookup(&geo(1, 64, 64, 32), Pass::Forward, 2), None);
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Table>(&text).unwrap(), t);
    }

    #[test]
    fn recording_and_pinning_follow_a_forward_onto_the_pool() {
        // Model forwards run on rayon's pool (`on_pool`); the tools that pin or record the
        // caller's convolutions must still see them.
        let g = geo(2, 8, 8, 16);
        let (_, seen) = record(|| super::super::on_pool(|| choose(&g, Pass::Forward)));
        assert_eq!(seen, vec![(g, Pass::Forward)]);
        for algo in [Algo::Im2col, Algo::Winograd(Variant::F2)] {
            let got = pinned(algo, || super::super::on_pool(|| choose(&g, Pass::Forward)));
            assert!(got == algo, "{got:?}");
        }
        assert!(Context::take().recording.is_none(), "nothing left behind");
    }

    #[test]
    fn recording_sees_each_shape_and_pass_once() {
        let g = geo(2, 8, 8, 16);
        let ((), seen) = record(|| {
            for _ in 0..3 {
                choose(&g, Pass::Forward);
                choose(&g, Pass::GradWeight);
            }
        });
        assert_eq!(seen, vec![(g, Pass::Forward), (g, Pass::GradWeight)]);
        let picked = measure(&seen, 1);
        assert_eq!(
            picked.len(),
            3,
            "forward, and one backward entry per gradient"
        );
        assert!(picked.iter().all(|e| e.ms.iter().all(|m| *m > 0.0)));
    }
}

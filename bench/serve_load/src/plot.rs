//! The soak plot, written by hand as a self-contained SVG: three panels over time (minutes) —
//! server RSS (MB) with the warm-up shaded and the bound dashed, open fds with the baseline,
//! and p50/p99 latency (ms) of the valid requests in each 10 s window.

use serde_json::Value;
use std::fmt::Write;

const W: f64 = 900.0;
const PANEL_H: f64 = 190.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const GAP: f64 = 50.0;

/// Ticks at 1, 2 or 5 × 10^k covering lo..=hi, about five of them.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo).max(1e-9) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = Vec::new();
    while t <= hi + step * 1e-6 {
        v.push(t);
        t += step;
    }
    v
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

struct Series<'a> {
    points: Vec<(f64, f64)>,
    colour: &'a str,
    name: &'a str,
}

struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    series: Vec<Series<'a>>,
    /// Horizontal reference lines: (value, colour, label).
    refs: Vec<(f64, &'a str, String)>,
}

fn panel(out: &mut String, p: &Panel, top: f64, x_max: f64, warmup_min: f64) {
    let (x0, x1, y1) = (LEFT, W - RIGHT, top + PANEL_H);
    let ys = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.1))
        .chain(p.refs.iter().map(|r| r.0));
    let (mut lo, mut hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1.0);
    lo = (lo - pad).max(0.0);
    hi += pad;
    let tx = |x: f64| x0 + (x1 - x0) * x / x_max;
    let ty = |y: f64| y1 - (y1 - top) * (y - lo) / (hi - lo);
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#ffffff" stroke="#444"/>"##,
        x1 - x0
    );
    if warmup_min > 0.0 {
        let _ = writeln!(
            out,
            r##"<rect x="{x0}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#eeeeee"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#777">warm-up</text>"##,
            tx(warmup_min) - x0,
            x0 + 4.0,
            top + 14.0
        );
    }
    for t in ticks(lo, hi) {
        let y = ty(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            label(t)
        );
    }
    for t in ticks(0.0, x_max) {
        let x = tx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            y1 + 5.0,
            y1 + 18.0,
            label(t)
        );
    }
    for (v, colour, name) in &p.refs {
        let y = ty(*v);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="{colour}" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="{colour}">{name}</text>"##,
            x1 - 4.0,
            y - 4.0
        );
    }
    for s in &p.series {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", tx(*x), ty(*y)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"##,
            s.colour,
            pts.join(" ")
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{x0}" y="{:.1}" font-size="14" font-weight="bold">{}</text><text x="{:.1}" y="{:.1}" font-size="11" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle">{}</text>"##,
        top - 8.0,
        p.title,
        x0 - 55.0,
        top + PANEL_H / 2.0,
        x0 - 55.0,
        top + PANEL_H / 2.0,
        p.unit
    );
    let mut lx = x1 - 10.0;
    for s in p.series.iter().rev() {
        let _ = writeln!(
            out,
            r##"<text x="{lx:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="{}">━ {}</text>"##,
            top - 8.0,
            s.colour,
            s.name
        );
        lx -= 12.0 + 7.5 * s.name.chars().count() as f64;
    }
}

/// The plot of a soak report (the JSON `soak` writes).
pub fn svg(report: &Value) -> String {
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    let sum = &report["summary"];
    let series = |f: &dyn Fn(&Value) -> Option<f64>| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|s| Some((s["t_s"].as_f64()? / 60.0, f(s)?)))
            .collect()
    };
    let x_max = samples
        .last()
        .and_then(|s| s["t_s"].as_f64())
        .unwrap_or(60.0)
        .max(1.0)
        / 60.0;
    let warmup_min = sum["warmup_s"].as_f64().unwrap_or(0.0) / 60.0;
    let mb = |k: &Value| k.as_f64().map(|v| v / 1024.0);
    let panels = [
        Panel {
            title: "Server RSS",
            unit: "MB",
            series: vec![Series {
                points: series(&|s| mb(&s["rss_kb"])),
                colour: "#1f77b4",
                name: "VmRSS",
            }],
            refs: vec![(
                mb(&sum["rss_limit_kb"]).unwrap_or(0.0),
                "#d62728",
                "bound".into(),
            )],
        },
        Panel {
            title: "Open file descriptors",
            unit: "fds",
            series: vec![Series {
                points: series(&|s| s["fds"].as_f64()),
                colour: "#2ca02c",
                name: "/proc/PID/fd",
            }],
            refs: vec![(
                sum["fds_start"].as_f64().unwrap_or(0.0),
                "#777",
                "before traffic".into(),
            )],
        },
        Panel {
            title: "Latency of valid requests (per 10 s window)",
            unit: "ms",
            series: vec![
                Series {
                    points: series(&|s| s["p50_ms"].as_f64()),
                    colour: "#9ecae1",
                    name: "p50",
                },
                Series {
                    points: series(&|s| s["p99_ms"].as_f64()),
                    colour: "#ff7f0e",
                    name: "p99",
                },
            ],
            refs: vec![],
        },
    ];
    let h = TOP + 3.0 * PANEL_H + 2.0 * GAP + 60.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif">"##
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#fafafa"/>"##
    );
    let verdict = if sum["pass"].as_bool() == Some(true) {
        "bounds held"
    } else {
        "FAILED"
    };
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="24" font-size="17" font-weight="bold">diffuse serve soak: {} min of mixed traffic, {verdict}</text>"##,
        report["traffic"]["minutes"]
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="44" font-size="12" fill="#444">{} · {} CPUs · {} failures · RSS {:.1}→{:.1} MB (bound {:.1}) · fds {}→{}</text>"##,
        report["date"].as_str().unwrap_or(""),
        report["machine"]["nproc"],
        sum["failures"],
        mb(&sum["rss_start_kb"]).unwrap_or(0.0),
        mb(&sum["rss_end_kb"]).unwrap_or(0.0),
        mb(&sum["rss_limit_kb"]).unwrap_or(0.0),
        sum["fds_start"],
        sum["fds_end"]
    );
    for (i, p) in panels.iter().enumerate() {
        panel(
            &mut out,
            p,
            TOP + i as f64 * (PANEL_H + GAP),
            x_max,
            warmup_min,
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">time since start (minutes)</text>"##,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        h - 14.0
    );
    out.push_str("</svg>\n");
    out
}

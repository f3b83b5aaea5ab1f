//! Load test of `diffuse serve` (loopback only, bounded in count and time).
//!
//! Starts the server twice on an ephemeral port — `--max-batch 1` and `--max-batch B` — and
//! each time sends `clients` concurrent clients × `requests` requests. Every request must get
//! an image (200) or a 429; anything else, or a lost request, fails the run. Prints a markdown
//! table and writes `bench/results/serve_load.json`.
//!
//! `cargo run --release -p serve-load -- [--clients 200] [--requests 5] [--steps 10] [--max-batch 16]`
//!
//! `cargo run --release -p serve-load -- soak --minutes 30 …` is the soak test instead: mixed
//! valid and hostile traffic for a bounded time while the server's RSS, open fds and p99 latency
//! are sampled (see `soak.rs`).

mod plot;
mod soak;

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

struct Opts {
    diffuse: String,
    model: String,
    clients: usize,
    requests: usize,
    steps: usize,
    max_batch: usize,
}

fn opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        diffuse: "target/release/diffuse".into(),
        model: "crates/diffuse-models/tests/fixtures/pipeline_basic".into(),
        clients: 200,
        requests: 5,
        steps: 10,
        max_batch: 16,
    };
    for pair in args.chunks(2) {
        let v = pair.get(1).context("every flag takes a value")?;
        match pair[0].as_str() {
            "--diffuse" => o.diffuse = v.clone(),
            "--model" => o.model = v.clone(),
            "--clients" => o.clients = v.parse()?,
            "--requests" => o.requests = v.parse()?,
            "--steps" => o.steps = v.parse()?,
            "--max-batch" => o.max_batch = v.parse()?,
            f => bail!("unknown flag {f} (flags: --diffuse --model --clients --requests --steps --max-batch; or `soak --help`)"),
        }
    }
    Ok(o)
}

struct Run {
    max_batch: usize,
    ok: usize,
    too_many: usize,
    other: usize,
    wall: f64,
    latencies: Vec<f64>,
}

async fn one_request(addr: &str, body: &str) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST /v1/images/generations HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let head = String::from_utf8_lossy(&resp[..resp.len().min(20)]).to_string();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    if code == 200 && !resp.windows(8).any(|w| w == b"b64_json") {
        bail!("200 without an image");
    }
    Ok(code)
}

async fn run(o: &Opts, max_batch: usize) -> Result<Run> {
    let mut child = tokio::process::Command::new(&o.diffuse)
        .args([
            "serve",
            "--model",
            &o.model,
            "--port",
            "0",
            "--max-batch",
            &max_batch.to_string(),
            "--max-wait-ms",
            "10",
            "--queue",
            "256",
        ])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", o.diffuse))?;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await? {
            if let Some(rest) = l.split("serving on http://").nth(1) {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string());
            }
        }
        bail!("server exited")
    })
    .await??;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let addr = addr.clone();
        let (requests, steps) = (o.requests, o.steps);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for r in 0..requests {
                let body =
                    json!({"steps": steps, "seed": c * 1000 + r, "sampler": "ddim"}).to_string();
                let t = Instant::now();
                let code =
                    tokio::time::timeout(Duration::from_secs(300), one_request(&addr, &body)).await;
                let code = match code {
                    Ok(Ok(c)) => c,
                    _ => 0,
                };
                out.push((code, t.elapsed().as_secs_f64()));
            }
            out
        }));
    }
    let mut run = Run {
        max_batch,
        ok: 0,
        too_many: 0,
        other: 0,
        wall: 0.0,
        latencies: Vec::new(),
    };
    for t in tasks {
        for (code, lat) in t.await? {
            match code {
                200 => {
                    run.ok += 1;
                    run.latencies.push(lat);
                }
                429 => run.too_many += 1,
                _ => run.other += 1,
            }
        }
    }
    run.wall = start.elapsed().as_secs_f64();
    // SIGTERM: drain and exit.
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    run.latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(run)
}

pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("soak") {
        return soak::main(&args[1..]).await;
    }
    let o = opts(&args)?;
    let total = o.clients * o.requests;
    let mut rows = Vec::new();
    for mb in [1, o.max_batch] {
        let r = run(&o, mb).await?;
        if r.other > 0 || r.ok + r.too_many != total {
            bail!(
                "max-batch {mb}: {} requests neither got an image nor a 429",
                total - r.ok - r.too_many
            );
        }
        rows.push(r);
    }
    println!("| max-batch | requests | images (200) | 429 | wall s | images/s | p50 latency s | p99 latency s |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for r in &rows {
        let ips = r.ok as f64 / r.wall;
        println!(
            "| {} | {total} | {} | {} | {:.2} | {:.1} | {:.3} | {:.3} |",
            r.max_batch,
            r.ok,
            r.too_many,
            r.wall,
            ips,
            pct(&r.latencies, 0.5),
            pct(&r.latencies, 0.99)
        );
        results.push(json!({
            "max_batch": r.max_batch, "requests": total, "ok": r.ok, "too_many_requests": r.too_many,
            "wall_s": r.wall, "images_per_s": ips,
            "p50_s": pct(&r.latencies, 0.5), "p99_s": pct(&r.latencies, 0.99),
        }));
    }
    let speedup = (rows[1].ok as f64 / rows[1].wall) / (rows[0].ok as f64 / rows[0].wall);
    println!(
        "\nbatching speedup (images/s, max-batch {} vs 1, same run): {speedup:.2}×",
        o.max_batch
    );
    let report = json!({
        "model": o.model, "clients": o.clients, "requests_per_client": o.requests, "steps": o.steps,
        "runs": results, "batching_speedup": speedup,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    std::fs::create_dir_all("bench/results")?;
    std::fs::write(
        "bench/results/serve_load.json",
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}

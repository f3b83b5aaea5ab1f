//! Soak test of `diffuse serve` (issue #21 item 4): bounded in time, loopback only.
//!
//! Starts the server on an ephemeral port and, for `--minutes`, runs at once:
//!
//! - `valid`: a few closed-loop clients (n 1–4, 10 steps, random class, sometimes guidance);
//!   each 200 must carry n images; their latencies give p50/p99 per sample window;
//! - `invalid`: malformed JSON and out-of-range values (expect 400), an unknown model (404),
//!   a body over `--max-body-bytes` (413);
//! - `sse_cancel`: streamed requests dropped right after their first event;
//! - `slow`: clients with a tiny receive buffer that read the answer one byte a second and hang
//!   up after `--slow-read-s`;
//! - `burst`: every `--burst-every-s`, more concurrent requests than the queue holds (200 or 429;
//!   the run must see 429s);
//! - `probe`: /healthz, /readyz, /metrics, /v1/models at every sample (200).
//!
//! Every 10 s it samples the server's VmRSS and open fds (`/proc/PID/status`, `/proc/PID/fd`),
//! the p50/p99 of the window's `valid` latencies and the window's counts per kind and status.
//! An unexpected status, a lost request (error or no answer in 120 s), a crash, or a drain that
//! does not exit 0 is a failure. Bounds: after the warm-up (3 min, or a third of a shorter run),
//! RSS may not exceed the warm-up maximum by more than max(10 %, 20 MB); after the traffic stops
//! the fd count must be back within ±4 of the count before traffic. Writes the samples and the
//! summary to `--json` and a three-panel plot (RSS, fds, p99 over time) to `--svg`; exits
//! non-zero when a bound or a request failed.
//!
//! `cargo run --release -p serve-load -- soak --minutes 30 --diffuse target/release/diffuse --model runs/mnist`

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const HELP: &str = "serve-load soak [--minutes 30] [--diffuse target/release/diffuse] \
[--model runs/mnist] [--queue 8] [--max-batch 8] [--valid-clients 3] [--slow-clients 3] \
[--slow-read-s 30] [--burst-every-s 60] [--burst 48] [--json bench/results/serve_soak.json] \
[--svg bench/results/serve_soak.svg] [--note TEXT]";

/// How long one request may take before it counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const FD_SLACK: i64 = 4;
const RSS_SLACK_FRAC: f64 = 0.10;
const RSS_SLACK_KB: u64 = 20 * 1024;

struct Opts {
    minutes: f64,
    diffuse: String,
    model: String,
    queue: usize,
    max_batch: usize,
    valid_clients: usize,
    slow_clients: usize,
    slow_read_s: u64,
    burst_every_s: u64,
    burst: usize,
    json: String,
    svg: String,
    note: String,
}

fn opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        minutes: 30.0,
        diffuse: "target/release/diffuse".into(),
        model: "runs/mnist".into(),
        queue: 8,
        max_batch: 8,
        valid_clients: 3,
        slow_clients: 3,
        slow_read_s: 30,
        burst_every_s: 60,
        burst: 48,
        json: "bench/results/serve_soak.json".into(),
        svg: "bench/results/serve_soak.svg".into(),
        note: String::new(),
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        std::process::exit(0);
    }
    for pair in args.chunks(2) {
        let v = pair
            .get(1)
            .with_context(|| format!("{} takes a value; usage: {HELP}", pair[0]))?;
        let bad = || format!("{} {v}: not a number", pair[0]);
        match pair[0].as_str() {
            "--minutes" => o.minutes = v.parse().with_context(bad)?,
            "--diffuse" => o.diffuse = v.clone(),
            "--model" => o.model = v.clone(),
            "--queue" => o.queue = v.parse().with_context(bad)?,
            "--max-batch" => o.max_batch = v.parse().with_context(bad)?,
            "--valid-clients" => o.valid_clients = v.parse().with_context(bad)?,
            "--slow-clients" => o.slow_clients = v.parse().with_context(bad)?,
            "--slow-read-s" => o.slow_read_s = v.parse().with_context(bad)?,
            "--burst-every-s" => o.burst_every_s = v.parse().with_context(bad)?,
            "--burst" => o.burst = v.parse().with_context(bad)?,
            "--json" => o.json = v.clone(),
            "--svg" => o.svg = v.clone(),
            "--note" => o.note = v.clone(),
            f => bail!("unknown flag {f}; usage: {HELP}"),
        }
    }
    if o.burst <= o.queue + o.max_batch {
        bail!(
            "--burst {} cannot overflow --queue {} + --max-batch {}: make it larger",
            o.burst,
            o.queue,
            o.max_batch
        );
    }
    Ok(o)
}

/// Counts and latencies shared by the traffic tasks; the sampler drains the window.
#[derive(Default)]
struct Stats {
    window_lat_ms: Vec<f64>,
    window: BTreeMap<String, u64>,
    total: BTreeMap<String, u64>,
    all_lat_ms: Vec<f64>,
    failures: Vec<String>,
    failure_count: u64,
    bursts: Vec<Value>,
}

type Shared = Arc<Mutex<Stats>>;

fn record(st: &Shared, kind: &str, status: &str) {
    let key = format!("{kind}:{status}");
    let mut s = st.lock().unwrap();
    *s.window.entry(key.clone()).or_default() += 1;
    *s.total.entry(key).or_default() += 1;
}

fn fail(st: &Shared, msg: String) {
    eprintln!("FAILURE: {msg}");
    let mut s = st.lock().unwrap();
    s.failure_count += 1;
    if s.failures.len() < 100 {
        s.failures.push(msg);
    }
}

/// A tiny deterministic generator: the traffic mix is the same from run to run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn request_bytes(addr: &str, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn status_of(resp: &[u8]) -> Option<u16> {
    let head = String::from_utf8_lossy(&resp[..resp.len().min(16)]).to_string();
    head.split_whitespace().nth(1)?.parse().ok()
}

/// One request over a fresh connection: (status, whole response).
async fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    // A server may answer (413) before it has read the whole body and close: keep reading.
    let _ = s.write_all(&request_bytes(addr, method, path, body)).await;
    let mut resp = Vec::new();
    let read = s.read_to_end(&mut resp).await;
    match (status_of(&resp), read) {
        (Some(c), _) => Ok((c, resp)),
        (None, Err(e)) => Err(e.into()),
        (None, Ok(_)) => bail!("connection closed without a status line"),
    }
}

fn snippet(resp: &[u8]) -> String {
    let s = String::from_utf8_lossy(resp);
    let body = s.split("\r\n\r\n").nth(1).unwrap_or(&s);
    body.chars().take(200).collect()
}

fn valid_body(rng: &mut Rng, stream: bool) -> (String, usize) {
    let n = 1 + rng.below(4) as usize;
    let mut b =
        json!({"n": n, "class_label": rng.below(10), "steps": 10, "seed": rng.below(1 << 30)});
    if rng.below(4) == 0 {
        b["guidance_scale"] = json!(3.0);
    }
    if stream {
        b["stream"] = json!(true);
    }
    (b.to_string(), n)
}

/// A valid request; 200 (with n images) or 429 (queue full) are the answers it may get.
async fn valid_once(addr: &str, st: &Shared, kind: &str, rng: &mut Rng) -> Option<f64> {
    let (body, n) = valid_body(rng, false);
    let t = Instant::now();
    let r = tokio::time::timeout(
        REQUEST_TIMEOUT,
        http(addr, "POST", "/v1/images/generations", body.as_bytes()),
    )
    .await;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(Ok((200, resp))) => {
            let images = resp.windows(8).filter(|w| w == b"b64_json").count();
            if images != n {
                fail(st, format!("{kind}: 200 with {images} images for n={n}"));
            }
            record(st, kind, "200");
            Some(ms)
        }
        Ok(Ok((429, _))) => {
            record(st, kind, "429");
            None
        }
        Ok(Ok((c, resp))) => {
            record(st, kind, &c.to_string());
            fail(st, format!("{kind}: {body} → {c} {}", snippet(&resp)));
            None
        }
        Ok(Err(e)) => {
            record(st, kind, "lost");
            fail(st, format!("{kind}: {body} → lost: {e}"));
            None
        }
        Err(_) => {
            record(st, kind, "lost");
            fail(
                st,
                format!("{kind}: {body} → no answer in {REQUEST_TIMEOUT:?}"),
            );
            None
        }
    }
}

/// Requests that must be refused, with the status each must get.
fn invalid_cases() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut big = br#"{"n": 1, "class_label": 1, "prompt": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 100_000));
    big.extend_from_slice(br#""}"#);
    vec![
        ("truncated_json", br#"{"n": 4, "class_label""#.to_vec(), 400),
        ("not_json", b"hello, server".to_vec(), 400),
        ("empty_body", Vec::new(), 400),
        (
            "wrong_type",
            br#"{"n": "four", "class_label": 1}"#.to_vec(),
            400,
        ),
        (
            "unknown_field",
            br#"{"n": 1, "class_label": 1, "colour": "red"}"#.to_vec(),
            400,
        ),
        ("n_zero", br#"{"n": 0, "class_label": 1}"#.to_vec(), 400),
        (
            "n_over_max",
            br#"{"n": 17, "class_label": 1}"#.to_vec(),
            400,
        ),
        (
            "n_huge",
            br#"{"n": 1000000000, "class_label": 1}"#.to_vec(),
            400,
        ),
        (
            "steps_over_max",
            br#"{"n": 1, "class_label": 1, "steps": 201}"#.to_vec(),
            400,
        ),
        (
            "steps_zero",
            br#"{"n": 1, "class_label": 1, "steps": 0}"#.to_vec(),
            400,
        ),
        (
            "class_out_of_range",
            br#"{"n": 1, "class_label": 11}"#.to_vec(),
            400,
        ),
        (
            "class_negative",
            br#"{"n": 1, "class_label": -1}"#.to_vec(),
            400,
        ),
        (
            "size_over_max",
            br#"{"n": 1, "class_label": 1, "size": 4096}"#.to_vec(),
            400,
        ),
        (
            "unknown_model",
            br#"{"model": "nope", "n": 1, "class_label": 1}"#.to_vec(),
            404,
        ),
        ("body_over_max", big, 413),
    ]
}

async fn invalid_loop(addr: String, st: Shared, deadline: Instant) {
    let cases = invalid_cases();
    let mut i = 0;
    while Instant::now() < deadline {
        let (name, body, want) = &cases[i % cases.len()];
        i += 1;
        let kind = format!("invalid_{name}");
        let r = tokio::time::timeout(
            REQUEST_TIMEOUT,
            http(&addr, "POST", "/v1/images/generations", body),
        )
        .await;
        match r {
            Ok(Ok((c, resp))) => {
                record(&st, "invalid", &c.to_string());
                if c != *want {
                    fail(
                        &st,
                        format!("{kind}: want {want}, got {c} {}", snippet(&resp)),
                    );
                }
            }
            Ok(Err(e)) => {
                record(&st, "invalid", "lost");
                fail(&st, format!("{kind}: lost: {e}"));
            }
            Err(_) => {
                record(&st, "invalid", "lost");
                fail(&st, format!("{kind}: no answer in {REQUEST_TIMEOUT:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn valid_loop(addr: String, st: Shared, deadline: Instant, seed: u64) {
    let mut rng = Rng(seed | 1);
    while Instant::now() < deadline {
        if let Some(ms) = valid_once(&addr, &st, "valid", &mut rng).await {
            let mut s = st.lock().unwrap();
            s.window_lat_ms.push(ms);
            s.all_lat_ms.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A streamed request dropped right after its first event (its work should be cancelled).
async fn sse_cancel_once(addr: &str, st: &Shared, rng: &mut Rng) -> Result<()> {
    let (mut body, _) = valid_body(rng, true);
    // More steps so that the drop lands mid-denoising.
    body = body.replace("\"steps\":10", "\"steps\":50");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&request_bytes(
        addr,
        "POST",
        "/v1/images/generations",
        body.as_bytes(),
    ))
    .await?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..k]);
        if resp.windows(6).any(|w| w == b"event:") {
            break;
        }
    }
    match status_of(&resp) {
        Some(200) if resp.windows(6).any(|w| w == b"event:") => record(st, "sse_cancel", "200"),
        Some(429) => record(st, "sse_cancel", "429"),
        Some(c) => {
            record(st, "sse_cancel", &c.to_string());
            fail(st, format!("sse_cancel: {body} → {c} {}", snippet(&resp)));
        }
        None => bail!("closed before a status line"),
    }
    Ok(()) // dropping `s` hangs up mid-stream
}

async fn sse_loop(addr: String, st: Shared, deadline: Instant) {
    let mut rng = Rng(0x05ee_d55e);
    while Instant::now() < deadline {
        match tokio::time::timeout(REQUEST_TIMEOUT, sse_cancel_once(&addr, &st, &mut rng)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                record(&st, "sse_cancel", "lost");
                fail(&st, format!("sse_cancel: lost: {e}"));
            }
            Err(_) => {
                record(&st, "sse_cancel", "lost");
                fail(&st, format!("sse_cancel: no event in {REQUEST_TIMEOUT:?}"));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A valid request read one byte a second through a tiny receive buffer; hangs up after `read_s`
/// seconds. Its answer (16 images of 64×64 at 1 step: about 50 kB for little compute) is far more
/// than the receive buffer holds; on loopback the server's send buffer takes the rest.
async fn slow_once(addr: &str, st: &Shared, read_s: u64, seed: u64) -> Result<()> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(1024)?;
    let mut s = sock.connect(addr.parse()?).await?;
    let body = json!({"n": 16, "class_label": seed % 10, "steps": 1, "size": 64, "seed": seed})
        .to_string();
    s.write_all(&request_bytes(
        addr,
        "POST",
        "/v1/images/generations",
        body.as_bytes(),
    ))
    .await?;
    let start = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while start.elapsed() < Duration::from_secs(read_s) {
        // The first byte waits for the images; later ones are one a second.
        let k = tokio::time::timeout(REQUEST_TIMEOUT, s.read(&mut b))
            .await
            .context("no byte in 120 s")??;
        if k == 0 {
            break;
        }
        got.push(b[0]);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match status_of(&got) {
        Some(c @ (200 | 429)) => record(st, "slow", &c.to_string()),
        Some(c) => {
            record(st, "slow", &c.to_string());
            fail(st, format!("slow: {body} → {c}"));
        }
        None if got.len() < 12 && start.elapsed() < Duration::from_secs(read_s) => {
            bail!("closed after {} bytes, before a status line", got.len())
        }
        None => bail!("no status line in {} bytes", got.len()),
    }
    Ok(())
}

async fn slow_loop(addr: String, st: Shared, deadline: Instant, read_s: u64, seed: u64) {
    let mut i = 0;
    while Instant::now() + Duration::from_secs(read_s) < deadline {
        i += 1;
        if let Err(e) = slow_once(&addr, &st, read_s, seed * 1000 + i).await {
            record(&st, "slow", "lost");
            fail(&st, format!("slow: lost: {e:#}"));
        }
    }
}

/// Every `every` seconds, `size` requests at once: more than the queue holds.
async fn burst_loop(
    addr: String,
    st: Shared,
    deadline: Instant,
    t0: Instant,
    every: u64,
    size: usize,
) {
    let mut k = 0u64;
    loop {
        let at = Duration::from_secs(every / 2 + k * every);
        if t0 + at + Duration::from_secs(5) > deadline {
            break;
        }
        tokio::time::sleep_until((t0 + at).into()).await;
        k += 1;
        let tasks: Vec<_> = (0..size)
            .map(|i| {
                let (addr, st) = (addr.clone(), st.clone());
                tokio::spawn(async move {
                    let mut rng = Rng((k << 20) + i as u64 + 7);
                    valid_once(&addr, &st, "burst", &mut rng).await.is_some()
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap_or(false) as usize;
        }
        let at_s = at.as_secs_f64();
        st.lock()
            .unwrap()
            .bursts
            .push(json!({"t_s": at_s, "requests": size, "ok": ok}));
    }
}

fn proc_status(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status: has the server exited?"))?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("Threads:")))
}

fn fd_count(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("list /proc/{pid}/fd (same user as the server?)"))?
        .count() as u64)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 100.0).round() / 100.0)
    } else {
        Value::Null
    }
}

/// The sample the sampler takes; `None` p-values when the window had no valid answer.
fn sample(pid: u32, t0: Instant, st: &Shared) -> Result<Value> {
    let (rss_kb, threads) = proc_status(pid)?;
    let fds = fd_count(pid)?;
    let (lat, counts) = {
        let mut s = st.lock().unwrap();
        (
            sorted(std::mem::take(&mut s.window_lat_ms)),
            std::mem::take(&mut s.window),
        )
    };
    Ok(json!({
        "t_s": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "rss_kb": rss_kb, "fds": fds, "threads": threads, "load1": load1(),
        "valid_ok": lat.len(),
        "p50_ms": num(crate::pct(&lat, 0.5)), "p99_ms": num(crate::pct(&lat, 0.99)),
        "counts": counts,
    }))
}

async fn probe(addr: &str, st: &Shared) {
    for path in ["/healthz", "/readyz", "/metrics", "/v1/models"] {
        match tokio::time::timeout(REQUEST_TIMEOUT, http(addr, "GET", path, b"")).await {
            Ok(Ok((200, _))) => record(st, "probe", "200"),
            Ok(Ok((c, resp))) => {
                record(st, "probe", &c.to_string());
                fail(st, format!("probe GET {path} → {c} {}", snippet(&resp)));
            }
            _ => {
                record(st, "probe", "lost");
                fail(st, format!("probe GET {path} → lost"));
            }
        }
    }
}

fn metric(text: &str, name: &str) -> Value {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Value::Null, |v| json!(v))
}

/// Least-squares slope of y over x (per unit of x).
fn slope(xy: &[(f64, f64)]) -> f64 {
    let n = xy.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = xy
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = xy.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    sxy / sxx
}

fn shell(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub async fn main(args: &[String]) -> Result<()> {
    let o = opts(args)?;
    let command = std::iter::once("serve-load".to_string())
        .chain(std::iter::once("soak".into()))
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let date = shell("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let duration = Duration::from_secs_f64(o.minutes * 60.0);
    let warmup_s = if o.minutes >= 9.0 {
        180.0
    } else {
        o.minutes * 20.0
    };
    let server_args = vec![
        "serve".to_string(),
        "--model".into(),
        o.model.clone(),
        "--port".into(),
        "0".into(),
        "--max-batch".into(),
        o.max_batch.to_string(),
        "--queue".into(),
        o.queue.to_string(),
    ];
    let mut child = tokio::process::Command::new(&o.diffuse)
        .args(&server_args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "start {}: build it (cargo build --release -p diffuse-cli) or pass --diffuse PATH",
                o.diffuse
            )
        })?;
    let pid = child.id().context("server has no pid")?;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(l) = lines.next_line().await? {
            eprintln!("server: {l}");
            if let Some(rest) = l.split("serving on http://").nth(1) {
                return Ok(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
        bail!("the server exited before serving: see its lines above (is --model {} a pipeline folder?)", o.model)
    })
    .await
    .context("the server did not print `serving on` within 120 s")??;
    // Keep draining the server's stderr (a full pipe would stall it); keep the tail for a crash.
    let log_tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let log_lines = Arc::new(AtomicU64::new(0));
    {
        let (tail, count) = (log_tail.clone(), log_lines.clone());
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                count.fetch_add(1, Ordering::Relaxed);
                let mut t = tail.lock().unwrap();
                t.push(l);
                if t.len() > 50 {
                    t.remove(0);
                }
            }
        });
    }
    eprintln!(
        "soak: server pid {pid} on {addr}; {} min of traffic, samples every {SAMPLE_EVERY:?}",
        o.minutes
    );

    let st: Shared = Arc::default();
    let t0 = Instant::now();
    let mut samples = vec![sample(pid, t0, &st)?];
    let (fd_base, rss_base) = (
        samples[0]["fds"].as_u64().unwrap(),
        samples[0]["rss_kb"].as_u64().unwrap(),
    );
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for c in 0..o.valid_clients {
        tasks.push(tokio::spawn(valid_loop(
            addr.clone(),
            st.clone(),
            deadline,
            1 + c as u64,
        )));
    }
    tasks.push(tokio::spawn(invalid_loop(
        addr.clone(),
        st.clone(),
        deadline,
    )));
    tasks.push(tokio::spawn(sse_loop(addr.clone(), st.clone(), deadline)));
    for c in 0..o.slow_clients {
        tasks.push(tokio::spawn(slow_loop(
            addr.clone(),
            st.clone(),
            deadline,
            o.slow_read_s,
            c as u64 + 1,
        )));
    }
    tasks.push(tokio::spawn(burst_loop(
        addr.clone(),
        st.clone(),
        deadline,
        t0,
        o.burst_every_s,
        o.burst,
    )));

    let mut crashed = None;
    let mut tick = tokio::time::interval_at((t0 + SAMPLE_EVERY).into(), SAMPLE_EVERY);
    while Instant::now() < deadline {
        tick.tick().await;
        if let Some(status) = child.try_wait()? {
            crashed = Some(status);
            break;
        }
        probe(&addr, &st).await;
        let s = sample(pid, t0, &st)?;
        eprintln!(
            "t={:>6}s rss={:>7} kB fds={:>3} p99={:>8} ms valid={:>3} load={:.1}",
            s["t_s"], s["rss_kb"], s["fds"], s["p99_ms"], s["valid_ok"], s["load1"]
        );
        samples.push(s);
    }
    if crashed.is_none() {
        for t in tasks {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(60), t).await;
        }
    }
    // Let closed connections and cancelled work settle, then the after-traffic sample.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if crashed.is_none() {
        crashed = child.try_wait()?;
    }
    let mut metrics = json!({});
    let mut drain = json!(null);
    let end = if crashed.is_none() {
        let s = sample(pid, t0, &st)?;
        if let Ok((200, m)) = http(&addr, "GET", "/metrics", b"").await {
            let m = String::from_utf8_lossy(&m).to_string();
            metrics = json!({
                "cancelled_total": metric(&m, "diffuse_cancelled_total"),
                "images_generated_total": metric(&m, "diffuse_images_generated_total"),
                "requests_200": metric(&m, "diffuse_requests_total{status=\"200\"}"),
                "requests_400": metric(&m, "diffuse_requests_total{status=\"400\"}"),
                "requests_404": metric(&m, "diffuse_requests_total{status=\"404\"}"),
                "requests_413": metric(&m, "diffuse_requests_total{status=\"413\"}"),
                "requests_429": metric(&m, "diffuse_requests_total{status=\"429\"}"),
                "queue_depth": metric(&m, "diffuse_queue_depth"),
            });
        }
        // SIGTERM drains and exits 0.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) => {
                drain = json!({"exit_code": status.code(), "seconds": t.elapsed().as_secs_f64()});
                if !status.success() {
                    fail(&st, format!("SIGTERM drain exited with {status}"));
                }
            }
            _ => fail(&st, "the server did not exit within 30 s of SIGTERM".into()),
        }
        Some(s)
    } else {
        None
    };
    if let Some(status) = crashed {
        fail(
            &st,
            format!(
                "the server exited during the soak ({status}); its last lines: {:?}",
                log_tail.lock().unwrap()
            ),
        );
    }

    // Bounds.
    let after: Vec<&Value> = samples
        .iter()
        .filter(|s| s["t_s"].as_f64().unwrap() > warmup_s)
        .collect();
    let rss = |s: &&Value| s["rss_kb"].as_u64().unwrap();
    let warm_max = samples
        .iter()
        .filter(|s| s["t_s"].as_f64().unwrap() <= warmup_s)
        .map(|s| s["rss_kb"].as_u64().unwrap())
        .max()
        .unwrap_or(rss_base);
    let rss_limit = warm_max + ((warm_max as f64 * RSS_SLACK_FRAC) as u64).max(RSS_SLACK_KB);
    let after_max = after.iter().map(rss).max().unwrap_or(0);
    let rss_end = samples.last().map(|s| rss(&s)).unwrap_or(0);
    let rss_slope_mb_per_h = slope(
        &after
            .iter()
            .map(|s| (s["t_s"].as_f64().unwrap() / 3600.0, rss(s) as f64 / 1024.0))
            .collect::<Vec<_>>(),
    );
    let fd_end = end.as_ref().map(|s| s["fds"].as_u64().unwrap());
    let fd_max = samples
        .iter()
        .map(|s| s["fds"].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    let rss_ok = after_max <= rss_limit;
    let fd_ok = fd_end.is_some_and(|e| (e as i64 - fd_base as i64).abs() <= FD_SLACK);
    let p99s: Vec<f64> = samples
        .iter()
        .filter_map(|s| s["p99_ms"].as_f64())
        .collect();
    let p99s_after: Vec<f64> = after.iter().filter_map(|s| s["p99_ms"].as_f64()).collect();
    let no_429 = !st.lock().unwrap().total.keys().any(|k| k.ends_with(":429"));
    if no_429 && !st.lock().unwrap().bursts.is_empty() {
        fail(
            &st,
            format!(
                "no burst of {} requests got a 429: the queue never overflowed",
                o.burst
            ),
        );
    }
    let (totals, failure_count, failures, all_lat, bursts) = {
        let s = st.lock().unwrap();
        (
            s.total.clone(),
            s.failure_count,
            s.failures.clone(),
            sorted(s.all_lat_ms.clone()),
            s.bursts.clone(),
        )
    };
    let minmax = |v: &[f64]| {
        json!([
            num(v.iter().cloned().fold(f64::INFINITY, f64::min)),
            num(v.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
        ])
    };
    let pass = rss_ok && fd_ok && failure_count == 0;
    let summary = json!({
        "pass": pass,
        "warmup_s": warmup_s,
        "rss_bound": format!("after the warm-up RSS ≤ warm-up max + max({:.0} %, {} MB)", RSS_SLACK_FRAC * 100.0, RSS_SLACK_KB / 1024),
        "fd_bound": format!("fds after the traffic within ±{FD_SLACK} of the fds before it"),
        "rss_start_kb": rss_base, "rss_warmup_max_kb": warm_max, "rss_limit_kb": rss_limit,
        "rss_after_warmup_max_kb": after_max, "rss_end_kb": rss_end,
        "rss_after_warmup_slope_mb_per_h": num(rss_slope_mb_per_h), "rss_ok": rss_ok,
        "fds_start": fd_base, "fds_max": fd_max, "fds_end": fd_end, "fd_ok": fd_ok,
        "p99_ms_range": minmax(&p99s), "p99_ms_range_after_warmup": minmax(&p99s_after),
        "valid_p50_ms_overall": num(crate::pct(&all_lat, 0.5)),
        "valid_p99_ms_overall": num(crate::pct(&all_lat, 0.99)),
        "counts": totals, "bursts": bursts,
        "failures": failure_count, "failure_examples": failures,
        "server_metrics_at_end": metrics, "drain": drain,
        "server_log_lines_after_start": log_lines.load(Ordering::Relaxed),
        "server_log_tail": *log_tail.lock().unwrap(),
    });
    let report = json!({
        "command": command,
        "date": date,
        "machine": {
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu": shell("sh", &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]),
            "note": o.note,
        },
        "server": {"binary": o.diffuse, "args": server_args, "model": o.model},
        "traffic": {
            "minutes": o.minutes, "valid_clients": o.valid_clients, "valid": "n 1-4, steps 10, class 0-9, guidance 3 on 1 in 4, 200 ms think time",
            "invalid": invalid_cases().iter().map(|(n, _, c)| json!({"case": n, "expect": c})).collect::<Vec<_>>(),
            "sse_cancel": "one every 2 s, steps 50, dropped after the first event",
            "slow_clients": o.slow_clients, "slow_read_s": o.slow_read_s, "slow": "n 16, size 64, steps 1 (about 50 kB of answer), 1 KiB receive buffer, 1 byte/s",
            "burst_every_s": o.burst_every_s, "burst": o.burst,
            "probe": "GET /healthz /readyz /metrics /v1/models every sample",
        },
        "summary": summary,
        "samples": samples,
    });
    if let Some(dir) = std::path::Path::new(&o.json).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&o.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", o.json))?;
    std::fs::write(&o.svg, crate::plot::svg(&report))
        .with_context(|| format!("write {}", o.svg))?;
    println!("{}", serde_json::to_string_pretty(&report["summary"])?);
    println!("wrote {} and {}", o.json, o.svg);
    if !pass {
        bail!(
            "soak failed: rss_ok {rss_ok} (after warm-up max {after_max} kB vs limit {rss_limit} kB), fd_ok {fd_ok} (start {fd_base}, end {fd_end:?}), {failure_count} failed requests/checks (see summary.failure_examples in {})",
            o.json
        );
    }
    Ok(())
}

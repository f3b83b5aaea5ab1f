//! `diffuse serve`: the HTTP service of diffuse-serve on a socket, with graceful shutdown.

use anyhow::{Context, Result};
use diffuse_serve::{app, metrics::Metrics, AppState, ServeConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers pipeline or model (UNet, DiT) folder; repeat for several models (id = folder name).
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Images denoised together at most.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// How long a request waits for others to share its batch.
    #[arg(long, default_value_t = 20)]
    max_wait_ms: u64,
    /// Requests waiting per model before 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` (or set DIFFUSE_API_KEY).
    #[arg(long, env = "DIFFUSE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most images per request.
    #[arg(long, default_value_t = 16)]
    max_n: usize,
    /// Most denoising steps per request.
    #[arg(long, default_value_t = 200)]
    max_steps: usize,
    /// Largest image side a request may ask for, and an uploaded image may have.
    #[arg(long, default_value_t = 256)]
    max_size: usize,
    /// Largest JSON request body in bytes.
    #[arg(long, default_value_t = 65536)]
    max_body_bytes: usize,
    /// Largest form of /v1/images/edits and /variations (image and mask files) in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_upload_bytes: usize,
    /// The most work one request may ask for: n × size² × steps (× 2 with guidance); the
    /// default is 16 images of 64×64 at 100 steps.
    #[arg(long, default_value_t = 16 * 64 * 64 * 100)]
    max_request_pixel_steps: u64,
    /// The most images queued or being denoised at once, over all models; more is a 429.
    #[arg(long, default_value_t = 256)]
    max_in_flight_images: usize,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> Result<()> {
    let device = crate::common::device(&args.device)?;
    let config = ServeConfig {
        max_batch: args.max_batch.max(1),
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue.max(1),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        max_n: args.max_n.max(1),
        max_steps: args.max_steps.max(1),
        max_size: args.max_size,
        max_body_bytes: args.max_body_bytes,
        max_upload_bytes: args.max_upload_bytes,
        max_request_pixel_steps: args.max_request_pixel_steps,
        max_in_flight_images: args.max_in_flight_images.max(1),
    };
    let mut state = AppState::new(config, Arc::new(Metrics::default()));
    for m in &args.model {
        let id = state
            .add_model(m, &device)
            .with_context(|| m.display().to_string())?;
        eprintln!("loaded model {id:?} from {}", m.display());
    }
    let state = Arc::new(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    rt.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving on http://{} (Ctrl-C or SIGTERM drains and stops)",
            listener.local_addr()?
        );
        axum::serve(listener, app(state.clone()))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })?;
    state.shutdown();
    eprintln!(
        "stopped after serving {} images",
        state.metrics.images_generated()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing in-flight requests");
}

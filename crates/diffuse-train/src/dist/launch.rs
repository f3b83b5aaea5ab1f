//! torchrun's launcher: start the ranks of this node as copies of the current command with
//! torchrun's environment ([`LaunchPlan::child_envs`]), wait for them, and stop the others when
//! one fails (they would wait for it at the next all-reduce).

use super::LaunchPlan;
use crate::{Error, Result};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// Launcher flags that the started ranks must not see (each takes a value).
pub const LAUNCH_FLAGS: [&str; 6] = [
    "--gpus",
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
];

/// A rank's arguments: `args` (this command's, without the program) less the launcher's flags
/// and `--device`, then `--device DEVICE`.
pub fn rank_args(args: impl IntoIterator<Item = String>, device: &str) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    let mut raw = args.into_iter();
    while let Some(a) = raw.next() {
        let flag = a.split('=').next().unwrap_or_default();
        if LAUNCH_FLAGS.contains(&flag) || flag == "--device" {
            if !a.contains('=') {
                raw.next();
            }
            continue;
        }
        argv.push(a);
    }
    argv.extend(["--device".to_string(), device.to_string()]);
    argv
}

/// Starts `plan.nproc_per_node` ranks of `exe argv` on this node and waits for all; the first
/// failure stops the others and is the error. CPU ranks share the cores (`DIFFUSE_THREADS`, unless
/// set already).
pub fn launch_ranks(
    plan: &LaunchPlan,
    exe: &Path,
    argv: &[String],
    device: &str,
    quiet: bool,
) -> Result<()> {
    let n = plan.nproc_per_node;
    let envs = plan.child_envs()?;
    let threads = (device == "cpu" && std::env::var_os("DIFFUSE_THREADS").is_none()).then(|| {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        (cores / n).max(1).to_string()
    });
    let mut children = Vec::with_capacity(n);
    for env in &envs {
        let mut cmd = Command::new(exe);
        cmd.args(argv).envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(t) = &threads {
            cmd.env("DIFFUSE_THREADS", t);
        }
        children.push(
            cmd.spawn()
                .map_err(|e| Error::Invalid(format!("cannot start a rank: {e}")))?,
        );
    }
    let world = n * plan.nnodes;
    if !quiet {
        eprintln!(
            "started ranks {}..{} of {world} on {device} (rendezvous {}:{})",
            plan.node_rank * n,
            plan.node_rank * n + n - 1,
            plan.master_addr,
            plan.master_port
        );
    }
    // Wait for all; after a failure, stop the rest (they would wait for the failed rank).
    let mut failed: Option<String> = None;
    let mut running: Vec<(usize, Child)> = children.into_iter().enumerate().collect();
    while !running.is_empty() {
        let mut still = Vec::new();
        for (local, mut child) in running {
            let status = child
                .try_wait()
                .map_err(|e| Error::Invalid(format!("waiting for a rank: {e}")))?;
            match status {
                Some(status) if !status.success() => {
                    failed.get_or_insert(format!(
                        "rank {} exited with {status}",
                        plan.node_rank * n + local
                    ));
                }
                Some(_) => {}
                None => still.push((local, child)),
            }
        }
        running = still;
        if failed.is_some() {
            for (_, child) in &mut running {
                let _ = child.kill();
                let _ = child.wait();
            }
            running.clear();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failed {
        Some(f) => Err(Error::Invalid(format!(
            "data-parallel training failed: {f} (its error is above)"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_args_drop_the_launcher_flags() {
        let args = [
            "train",
            "--gpus",
            "2",
            "--config",
            "a.toml",
            "--master-port=1234",
            "--device",
            "cpu",
            "--nnodes",
            "1",
            "--quiet",
        ]
        .map(String::from);
        assert_eq!(
            rank_args(args, "cuda"),
            ["train", "--config", "a.toml", "--quiet", "--device", "cuda"].map(String::from)
        );
    }
}

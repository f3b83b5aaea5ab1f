//! What the end-to-end test files share: running the binary and checking its errors.
#![allow(dead_code)] // each test file is its own crate and uses a part of this

use std::process::{Command, Output};

/// `diffuse ARGS` as a child process (backtraces on, never a data-parallel rank by accident).
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffuse"));
    c.args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("WORLD_SIZE");
    c
}

pub fn diffuse(args: &[&str]) -> Output {
    command(args).output().expect("run diffuse")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run prints exactly one line, starting "error:", and never a panic or backtrace.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure");
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "{err} lacks {needle:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// max |a − b| / max |b|.
pub fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let m = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
}

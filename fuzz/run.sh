#!/usr/bin/env bash
# Runs the fuzz targets under libFuzzer, each for SECONDS (default 600), LANES at a time
# (default 2), and prints a table: target, executions, result. Builds with `cargo fuzz build`
# (stable Rust: no sanitizer, `-s none`); the working corpus grows in WORK (default
# /tmp/diffuse-fuzz), seeded from fuzz/corpus/TARGET, which it does not write.
# A crash stops that target: its input is in WORK/artifacts/, the log in WORK/TARGET.log.
# Usage: fuzz/run.sh [SECONDS] [TARGET ...]
set -uo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-600}
shift || true
WORK=${WORK:-/tmp/diffuse-fuzz}
LANES=${LANES:-2}
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(safetensors pickle config_json train_toml image idx cifar onnx_roundtrip serve_body serve_form)
cargo fuzz build -s none -O >/dev/null || exit 1
BIN=target/x86_64-unknown-linux-gnu/release
mkdir -p "$WORK/artifacts"
one() {
  local t=$1
  mkdir -p "$WORK/$t"
  nice -n 10 "$BIN/$t" "$WORK/$t" "corpus/$t" -max_total_time="$SECONDS_EACH" \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$WORK/artifacts/$t-" >"$WORK/$t.log" 2>&1
  local rc=$?
  local runs
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$WORK/$t.log" | grep -oE '[0-9]+$' | tail -1)
  [ -z "$runs" ] && runs=$(grep -oE '^#[0-9]+' "$WORK/$t.log" | tail -1 | tr -d '#')
  local result="no crash"
  if [ $rc -ne 0 ]; then
    result="CRASH (exit $rc): $(grep -m1 -E 'ERROR|panicked|deadly signal|timeout|out-of-memory|malloc' "$WORK/$t.log" | cut -c1-160)"
  fi
  echo "| $t | ${runs:-?} | $SECONDS_EACH s | $result |" | tee -a "$WORK/table.md"
}
echo "| target | executions | time | result |" | tee "$WORK/table.md"
echo "|---|---|---|---|" | tee -a "$WORK/table.md"
i=0
for t in "${TARGETS[@]}"; do
  one "$t" &
  i=$((i + 1))
  if [ $((i % LANES)) -eq 0 ]; then wait; fi
done
wait

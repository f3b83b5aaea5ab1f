#!/usr/bin/env bash
# Build the CUDA (sm_90a, CUDA 13.0) binaries on this CPU-only machine and stage them in .device/:
#   .device/diffuse.xz  - the CLI, `--features cuda`
#   .device/parity.xz   - diffuse-core's parity test executable, `--features cuda`
# (xz-compressed: see below; uncompressed copies stay in target-cuda/device/)
# for tools/cuda/device_check.sh on the GPU machine. The CPU build in target/ is not touched
# (target-cuda/). Clean build: ~11-20 min on 2 cores, mostly nvcc on candle-kernels.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

"$HERE/setup.sh"
# shellcheck source=env.sh
source "$HERE/env.sh"

export CARGO_TARGET_DIR="$ROOT/target-cuda"
NICE=(nice -n 19)
# --locked: never rewrite Cargo.lock from here.
CARGO_FLAGS=(--release --locked --features cuda)

start=$SECONDS
echo "== cargo build -p diffuse-cli --features cuda"
"${NICE[@]}" cargo build "${CARGO_FLAGS[@]}" -p diffuse-cli

echo "== cargo test -p diffuse-core --features cuda --no-run"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
"${NICE[@]}" cargo test "${CARGO_FLAGS[@]}" -p diffuse-core --no-run --message-format=json-render-diagnostics > "$json"
parity="$(python3 - "$json" <<'PY'
import json, sys
exe = None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "parity" \
            and "test" in m["target"].get("kind", []) and m.get("executable"):
        exe = m["executable"]
print(exe or "")
PY
)"
if [[ -z "$parity" ]]; then
  # Fallback: the newest parity-<hash> executable.
  parity="$(find "$CARGO_TARGET_DIR/release/deps" -maxdepth 1 -type f -name 'parity-*' -perm -u+x \
            ! -name '*.d' -printf '%T@ %p\n' | sort -nr | head -n1 | cut -d' ' -f2-)"
fi
[[ -n "$parity" && -x "$parity" ]] || { echo "build.sh: parity test executable not found" >&2; exit 1; }
echo "build.sh: parity executable: $parity"
echo "build.sh: cargo took $((SECONDS - start)) s"

# Stripped, uncompressed copies for local checks: target-cuda/device/{diffuse,parity}.
STAGE="$CARGO_TARGET_DIR/device"
mkdir -p "$STAGE"
install -m 755 "$CARGO_TARGET_DIR/release/diffuse" "$STAGE/diffuse"
install -m 755 "$parity" "$STAGE/parity"
# Line tables off (symbols kept, for backtraces). Even fully stripped, the two binaries are ~96 MB:
# each embeds candle-kernels' sm_90a fatbin (.nv_fatbin, ~33 MB) -- over the device tool's 64 MiB
# carry limit. So .device/ gets xz-compressed copies (~12 MB together);
# tools/cuda/device_check.sh unpacks them on the GPU machine.
strip --strip-debug "$STAGE/diffuse" "$STAGE/parity"

LIMIT=$((60 * 1000 * 1000))
mkdir -p "$ROOT/.device"
# No stale uncompressed binaries in .device/ (they would be carried too).
rm -f "$ROOT/.device/diffuse" "$ROOT/.device/parity"
for b in diffuse parity; do
  xz -6 -T2 -c "$STAGE/$b" > "$ROOT/.device/$b.xz.tmp"
  mv -f "$ROOT/.device/$b.xz.tmp" "$ROOT/.device/$b.xz"
done
# Stub libcurand.so.10 (see setup.sh), used by device_check.sh only where the GPU machine has no curand.
mkdir -p "$ROOT/.device/lib-fallback"
install -m 755 "$HERE/.venv/cuda-libs/fallback/libcurand.so.10" "$ROOT/.device/lib-fallback/libcurand.so.10"
total="$(du -cb "$ROOT/.device" | tail -n1 | cut -f1)"

ls -lR "$STAGE/diffuse" "$STAGE/parity" "$ROOT/.device/"
echo "build.sh: .device/ holds $total bytes (limit $LIMIT)"
(( total < LIMIT )) || { echo "build.sh: .device/ too large for the device carry" >&2; exit 1; }
echo "build.sh: total $((SECONDS - start)) s"

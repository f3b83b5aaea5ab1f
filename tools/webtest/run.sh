#!/usr/bin/env bash
# Drives the diffuse serve web page in headless Chromium: take the model's own sampler, steps
# and guidance as the page preselects them, generate, wait for the images, check that they are
# not blank, then the same with dpmpp_2m; save a screenshot to docs/web-page.png. Then the
# editor: upload an image, paint a mask with the mouse, inpaint, check the kept part is kept and
# the painted part redrawn; screenshot docs/web-editor.png. Installs what
# it needs (Debian chromium and chromium-driver; selenium into tools/webtest/.venv). Not part of
# CI (it needs apt).
# Usage: [SHOT=docs/web-page.png] bash tools/webtest/run.sh [MODEL_DIR [PROMPT EDIT_PROMPT]]
# (the prompts for a text-to-image model; the editor screenshot is SHOT with web-editor for web-page)
# Without MODEL_DIR it trains the README quick start's config (examples/mnist.toml) for 300
# steps into runs/webtest-quickstart (once) and serves that: the model a new user opens the
# page with.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tools/webtest"
cd "$ROOT"
MODEL="${1:-}"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ ! -x "$HERE/.venv/bin/python" ]; then
  python3 -m venv "$HERE/.venv"
fi
"$HERE/.venv/bin/pip" install -q -r "$HERE/requirements.txt"
cargo build --release -q -p diffuse-cli
if [ -z "$MODEL" ]; then
  MODEL=runs/webtest-quickstart
  if [ ! -f "$MODEL/model_index.json" ]; then
    ./target/release/diffuse train --config examples/mnist.toml --output "$MODEL" \
      --max-steps 300 --set train.sample_every=300 --quiet
  fi
fi

LOG="$(mktemp)"
./target/release/diffuse serve --model "$MODEL" --port 0 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 100); do
  ADDR="$(sed -n 's/.*serving on http:\/\/\([^ ]*\).*/\1/p' "$LOG")"
  [ -n "$ADDR" ] && break
  sleep 0.2
done
[ -n "$ADDR" ] || { cat "$LOG"; echo "server did not start" >&2; exit 1; }
"$HERE/.venv/bin/python" "$HERE/drive.py" "http://$ADDR/" "${SHOT:-$ROOT/docs/web-page.png}" "${@:2}"

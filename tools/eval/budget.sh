#!/usr/bin/env bash
# Quality per minute at 32 px (issue #24): trains examples/mnist32.toml for MINUTES at THREADS
# threads, samples 1000 images with the pipeline's recorded sampler, steps, guidance and
# interval, and judges them with the MNIST classifier against the 10,000 test digits (class
# accuracy, classifier-FID, precision/recall). In the same run, on the same threads, the same
# recipe in PyTorch + diffusers (tools/eval/budget_torch.py, the pinned fixture venv) for the
# same minutes, judged the same way; and 1000 real training digits as the floor.
# Usage: tools/eval/budget.sh [MINUTES=15] [OUT=runs/budget] [THREADS=2]
set -euo pipefail
MIN="${1:-15}"; OUT="${2:-runs/budget}"; THREADS="${3:-2}"
BIN="${DIFFUSE:-target/release/diffuse}"
PY="${PYTHON:-tools/fixtures/.venv/bin/python}"
MNIST="${DIFFUSE_MNIST:-../shared/data/mnist}"
CONFIG="${CONFIG:-examples/mnist32.toml}"
[[ -x "$PY" ]] || tools/fixtures/setup.sh
mkdir -p "$OUT"
judge() { "$BIN" --threads "$THREADS" eval --real mnist --real-split test --features mnist \
            --metrics fid,cls,pr --num-samples 1000 --json --quiet "$@"; }

# 1. diffuse.
if [[ ! -d "$OUT/diffuse/scheduler" ]]; then
  start=$(date +%s)
  "$BIN" --threads "$THREADS" train --config "$CONFIG" --set "train.max_minutes=$MIN" \
    --output "$OUT/diffuse" --quiet
  echo $(( $(date +%s) - start )) > "$OUT/diffuse/wall_s"
fi
# 100 per class with the pipeline's recorded sampler, steps, guidance and interval (no flags).
if [[ ! -f "$OUT/diffuse/sample_s" ]]; then
  start=$(date +%s)
  for c in 0 1 2 3 4 5 6 7 8 9; do
    "$BIN" --threads "$THREADS" sample --model "$OUT/diffuse" --class "$c" --num-images 100 \
      --batch-size 100 --seed "$c" --output "$OUT/diffuse/samples/$c" --quiet
    rm -f "$OUT/diffuse/samples/$c/grid.png"
  done
  echo $(( $(date +%s) - start )) > "$OUT/diffuse/sample_s"
fi
judge --fake "$OUT/diffuse/samples" > "$OUT/diffuse/eval.json"

# 2. PyTorch + diffusers, the same recipe and minutes.
[[ -f "$OUT/torch/torch_run.json" ]] || "$PY" tools/eval/budget_torch.py --config "$CONFIG" \
  --minutes "$MIN" --threads "$THREADS" --output "$OUT/torch" --mnist "$MNIST"
judge --fake "$OUT/torch/samples" > "$OUT/torch/eval.json"

# 3. The floor: 1000 real training digits, padded to 32 px as both runs saw them.
"$PY" - "$MNIST" "$OUT/real" <<'PY'
import gzip, os, sys
import numpy as np
from PIL import Image
root, out = sys.argv[1:]
with gzip.open(f"{root}/train-images-idx3-ubyte.gz") as f:
    x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:1000]
with gzip.open(f"{root}/train-labels-idx1-ubyte.gz") as f:
    y = np.frombuffer(f.read(), np.uint8, offset=8)[:1000]
for i, (img, c) in enumerate(zip(x, y)):
    os.makedirs(f"{out}/{c}", exist_ok=True)
    Image.fromarray(np.pad(img, 2)).save(f"{out}/{c}/{i:05d}.png")
PY
judge --fake "$OUT/real" > "$OUT/real/eval.json"

"$PY" - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys
out = sys.argv[1]
m = [json.loads(l) for l in open(f"{out}/diffuse/metrics.jsonl")]
t = json.load(open(f"{out}/torch/torch_run.json"))
rows = [("diffuse", m[-1]["step"], m[-1]["time_s"], float(open(f"{out}/diffuse/sample_s").read()),
         json.load(open(f"{out}/diffuse/eval.json"))),
        (f"PyTorch {t['torch'].split('+')[0]} + diffusers {t['diffusers']}", t["steps"], t["train_s"],
         t["sample_s"], json.load(open(f"{out}/torch/eval.json"))),
        ("real training digits (floor)", None, None, None, json.load(open(f"{out}/real/eval.json")))]
def cell(v, f):
    return "" if v is None else f.format(v)
print("| run | steps | train s | sample s | classifier-FID | class accuracy | precision | recall |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, steps, tr, sm, e in rows:
    print(f"| {name} | {cell(steps, '{}')} | {cell(tr, '{:.0f}')} | {cell(sm, '{:.0f}')} | "
          f"{e['fid']:.2f} | {100 * e['class_accuracy']:.1f} % | {e['precision']:.3f} | {e['recall']:.3f} |")
PY

# Grids: the first 12 samples of every class (a row each), diffuse beside PyTorch.
"$PY" - "$OUT" <<'PY'
import os, sys
from PIL import Image, ImageDraw
out = sys.argv[1]
def grid(d):
    rows = [sorted(os.listdir(f"{d}/{c}"))[:12] for c in range(10)]
    g = Image.new("L", (12 * 34, 10 * 34), 255)
    for c, names in enumerate(rows):
        for i, n in enumerate(names):
            g.paste(Image.open(f"{d}/{c}/{n}").convert("L"), (i * 34 + 1, c * 34 + 1))
    return g
tiles = [("diffuse", grid(f"{out}/diffuse/samples")), ("PyTorch + diffusers", grid(f"{out}/torch/samples"))]
canvas = Image.new("L", (2 * tiles[0][1].width + 24, tiles[0][1].height + 22), 255)
d = ImageDraw.Draw(canvas)
for k, (label, g) in enumerate(tiles):
    x = k * (g.width + 24)
    d.text((x, 4), label, fill=0)
    canvas.paste(g, (x, 22))
canvas.save(f"{out}/grids.png")
print(f"wrote {out}/grids.png")
PY

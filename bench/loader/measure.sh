#!/usr/bin/env bash
# Issue #23: the loader alone against the training step on a folder of JPEGs, and the same
# from its pixel cache. Make the folder first:
#   tools/fixtures/.venv/bin/python bench/loader/make_jpeg_folder.py runs/jpeg100k 100000 384
# Usage: bench/loader/measure.sh [FOLDER=runs/jpeg100k] [SIZE=32]   (from the repository root)
set -euo pipefail
D="${1:-runs/jpeg100k}"; S="${2:-32}"
B="${DIFFUSE:-target/release/diffuse}"
C="$D-cache$S"
for w in 1 2 1 2; do "$B" data bench --data "$D" --size "$S" --fit center_crop --batch-size 32 --workers "$w" --batches 60; done
/usr/bin/time -f "data cache: %e s wall" "$B" data cache --data "$D" --size "$S" --fit center_crop --output "$C" --quiet
for w in 1 2; do "$B" data bench --data "$C" --size "$S" --batch-size 32 --workers "$w" --batches 200; done
for src in "$D" "$C"; do
  out="$(mktemp -d)"
  "$B" train --config examples/openmoji.toml --output "$out/run" --set "data.name=\"$src\"" \
    --set 'data.fit="center_crop"' --set "data.size=$S" --max-steps 60 --set train.sample_every=0 \
    --set train.checkpoint_every=1000 --quiet
  python3 - "$out/run/metrics.jsonl" "$src" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][10:]
wait, span = sum(r["data_wait_s"] for r in rows), rows[-1]["time_s"] - rows[0]["time_s"]
print(f"train on {sys.argv[2]}: steps 11-60 median {statistics.median(r['images_per_s'] for r in rows):.1f} "
      f"images/s, data wait {wait:.3f} s of {span:.1f} s ({100 * wait / span:.2f} %)")
PY
  rm -rf "$out"
done

#!/usr/bin/env bash
# The sampler × steps table of docs/eval.md: classifier-FID, class accuracy and IS of N samples
# per row (classes 0..9 in turn, fixed seed) from a class-conditional ε-prediction MNIST model,
# against classifier statistics of MNIST train fitted to the model's 16 px.
# Usage: tools/eval/sampler_table.sh MODEL_DIR [N] [GUIDANCE]   (writes MODEL_DIR/eval-table.jsonl)
set -euo pipefail
MODEL="$1"; N="${2:-200}"; G="${3:-2}"
BIN="${DIFFUSE:-target/release/diffuse}"
STATS="$MODEL/mnist16-train-cls.npz"
OUT="$MODEL/eval-table.jsonl"
if [[ ! -f "$STATS" ]]; then
  "$BIN" eval stats --data mnist --features mnist --size 16 --output "$STATS" --quiet
fi
: > "$OUT"
for row in ddim:10 ddim:20 ddim:50 dpmpp_2m:10 dpmpp_2m:20 euler:20 unipc:10; do
  s="${row%%:*}"; k="${row##*:}"
  start=$(date +%s.%N)
  json=$("$BIN" eval --real "$STATS" --model "$MODEL" --sampler "$s" --steps "$k" \
    --guidance-scale "$G" --num-samples "$N" --seed 0 --features mnist \
    --metrics fid,cls,is --json --quiet)
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  echo "{\"sampler\":\"$s\",\"steps\":$k,\"guidance\":$G,\"seconds\":$secs,\"eval\":$json}" | tee -a "$OUT"
done

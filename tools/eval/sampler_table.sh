#!/usr/bin/env bash
# The sampler × steps table of docs/eval.md. Per row, N/10 samples of each class 0..9 from a
# class-conditional ε-prediction MNIST model (`diffuse sample`, seeds SEEDS, into
# DIR/<class>/), then `diffuse eval` of that folder: classifier-FID against classifier
# statistics of MNIST train fitted to the model's 16 px, class accuracy and IS. Samples are
# kept: EVAL_ONLY=1 re-evaluates them (e.g. with a retrained classifier) without sampling.
# Usage: tools/eval/sampler_table.sh MODEL_DIR [N per seed] [GUIDANCE] [SEEDS]
#        → MODEL_DIR/eval-table.jsonl
set -euo pipefail
MODEL="$1"; N="${2:-100}"; G="${3:-2}"; SEEDS="${4:-0 1}"
BIN="${DIFFUSE:-target/release/diffuse}"
STATS="$MODEL/mnist16-train-cls.npz"
OUT="$MODEL/eval-table.jsonl"
"$BIN" eval stats --data mnist --features mnist --size 16 --output "$STATS" --quiet
: > "$OUT"
for row in ddim:10 ddim:20 ddim:50 dpmpp_2m:10 dpmpp_2m:20 euler:20 unipc:10; do
  s="${row%%:*}"; k="${row##*:}"
  dir="$MODEL/eval-samples/$s-$k-g$G"
  secs=0
  for seed in $SEEDS; do
    sub="$dir/seed$seed"
    [[ -n "${EVAL_ONLY:-}" || -d "$sub/9" ]] && continue
    start=$(date +%s.%N)
    for c in 0 1 2 3 4 5 6 7 8 9; do
      "$BIN" sample --model "$MODEL" --sampler "$s" --steps "$k" --guidance-scale "$G" \
        --class "$c" --num-images $((N / 10)) --batch-size $((N / 10)) --seed "$seed" \
        --output "$sub/$c" --quiet 2>/dev/null
    done
    secs=$(echo "$secs + $(date +%s.%N) - $start" | bc)
  done
  # One folder DIR/all/<class>/ over the seeds, for the evaluation.
  rm -rf "$dir/all"
  for seed in $SEEDS; do
    for c in 0 1 2 3 4 5 6 7 8 9; do
      mkdir -p "$dir/all/$c"
      for f in "$dir/seed$seed/$c"/0*.png; do cp "$f" "$dir/all/$c/s$seed-$(basename "$f")"; done
    done
  done
  json=$("$BIN" eval --real "$STATS" --fake "$dir/all" --features mnist --metrics fid,cls,is --json --quiet)
  echo "{\"sampler\":\"$s\",\"steps\":$k,\"guidance\":$G,\"seeds\":\"$SEEDS\",\"sample_seconds\":$secs,\"eval\":$json}" | tee -a "$OUT"
done

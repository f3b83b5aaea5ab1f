#!/usr/bin/env bash
# The measurement of docs/text-to-image.md: a text-to-image model trained on OpenMoji
# (examples/openmoji-text.toml) draws 16 fixed prompts — 8 captions seen in training and the 8
# held out of it (the config's [captions] holdout) — 16 images each; each image's nearest
# training image by Inception features decides whether it shows the prompt's group (against
# the group's share of the training images as chance). Writes OUT/prompts.{json,md},
# OUT/grid.png (a row per prompt: seen first) and OUT/neighbours.png.
# Usage: tools/eval/text2image.sh MODEL [OUT] [GUIDANCE] [STEPS]
set -euo pipefail
MODEL="$1"; OUT="${2:-runs/text2image-eval}"; G="${3:-4}"; STEPS="${4:-25}"
BIN="${DIFFUSE:-target/release/diffuse}"
seen=("red apple" "grinning face" "red heart" "green circle" "orange book" "yellow square"
  "dog face" "rocket")
held=("green apple" "blue heart" "purple circle" "orange square" "yellow hexagon" "blue book"
  "brown flag" "black cat")
args=()
for p in "${seen[@]}"; do args+=(--prompt "$p"); done
for p in "${held[@]}"; do args+=(--holdout "$p"); done
"$BIN" eval prompts --model "$MODEL" --data openmoji "${args[@]}" --per-prompt 16 \
  --sampler dpmpp_2m --steps "$STEPS" --guidance-scale "$G" --output "$OUT"

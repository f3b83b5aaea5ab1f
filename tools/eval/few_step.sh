#!/usr/bin/env bash
# The few-step figures of README ("Few-step generation"): classifier-FID and class accuracy by
# network evaluations for the ε teacher (DDIM, DPM-Solver++, UniPC at guidance 2), its reflow
# student (flow Euler) and its progressively distilled students (DDIM at each one's own step
# count), both without guidance; and sample grids at 1, 2 and 4 steps. Every sweep is resumable
# (rows already in a sweep's table.jsonl are skipped), so a rerun only plots.
# Usage: tools/eval/few_step.sh TEACHER REFLOW_STUDENT PROGRESSIVE_DIR [N samples] [OUT]
#        → OUT/fid-vs-steps.png, OUT/class-accuracy-vs-steps.png, OUT/grids.png
set -euo pipefail
TEACHER="$1"; REFLOW="$2"; PROG="$3"; N="${4:-1000}"; OUT="${5:-runs/few-step}"
BIN="${DIFFUSE:-target/release/diffuse}"
PY="${PYTHON:-tools/fixtures/.venv/bin/python}"
common=(--real mnist --features mnist --metrics fid,kid,pr,cls,is --num-samples "$N" --quiet)
rows=""
for s in ddim dpmpp_2m unipc; do for k in 1 2 4 8 16 50; do rows+="$s:$k,"; done; done
"$BIN" eval sweep --model "$TEACHER" "${common[@]}" --guidance-scale 2 --runs "${rows%,}" > /dev/null
"$BIN" eval sweep --model "$REFLOW" "${common[@]}" --guidance-scale 1 \
  --runs flow_euler:1,flow_euler:2,flow_euler:4,flow_euler:8 > /dev/null
sweeps=(--sweep "teacher=$TEACHER/sweep" --sweep "reflow=$REFLOW/sweep")
for d in "$PROG"/steps-*; do
  n="${d##*steps-}"
  "$BIN" eval sweep --model "$d" "${common[@]}" --guidance-scale 1 --runs "ddim:$n" > /dev/null
  sweeps+=(--sweep "progressive=$d/sweep")
done
mkdir -p "$OUT"
"$BIN" eval plot --by nfe --samplers ddim,dpmpp_2m,unipc,flow_euler --title "MNIST 16 px, teacher vs students" --output "$OUT" "${sweeps[@]}"
grids=()
for n in 1 2 4; do
  grids+=("progressive, $n step(s)=$PROG/steps-$n/sweep/grid-ddim-$n.png")
done
grids+=("reflow, 1 step=$REFLOW/sweep/grid-flow_euler-1.png")
grids+=("teacher, DDIM 50=$TEACHER/sweep/grid-ddim-50.png")
"$PY" tools/eval/grid_row.py "$OUT/grids.png" "${grids[@]}"
echo "plots and grids in $OUT"

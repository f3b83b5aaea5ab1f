#!/usr/bin/env bash
# The comparison of docs/few-step.md: one ε/v teacher and its four few-step students —
# consistency distillation (LCM), easy consistency tuning (LCM), progressive distillation (DDIM)
# and reflow (flow Euler) — at 1, 2 and 4 network evaluations, without guidance, against the
# teacher's DPM-Solver++ at 10 and 20 steps with guidance 2: classifier-FID, precision/recall and
# class accuracy on MNIST features, the FID-vs-NFE and accuracy-vs-NFE plots, and the grids.
# Every sweep is resumable (rows in a sweep's table.jsonl are skipped), so a rerun only plots.
# Usage: tools/eval/consistency.sh TEACHER CD ECT PROGRESSIVE_DIR REFLOW [N samples] [OUT]
set -euo pipefail
TEACHER="$1"; CD="$2"; ECT="$3"; PROG="$4"; REFLOW="$5"; N="${6:-1000}"; OUT="${7:-runs/consistency}"
BIN="${DIFFUSE:-target/release/diffuse}"
PY="${PYTHON:-tools/fixtures/.venv/bin/python}"
common=(--real mnist --features mnist --metrics fid,pr,cls --num-samples "$N" --quiet)
"$BIN" eval sweep --model "$TEACHER" "${common[@]}" --guidance-scale 2 \
  --runs dpmpp_2m:1,dpmpp_2m:2,dpmpp_2m:4,dpmpp_2m:10,dpmpp_2m:20 > /dev/null
for s in "$CD" "$ECT"; do
  "$BIN" eval sweep --model "$s" "${common[@]}" --guidance-scale 1 --runs lcm:1,lcm:2,lcm:4 > /dev/null
done
"$BIN" eval sweep --model "$REFLOW" "${common[@]}" --guidance-scale 1 \
  --runs flow_euler:1,flow_euler@1000/500,flow_euler:4 > /dev/null
sweeps=(--sweep "teacher=$TEACHER/sweep" --sweep "CD=$CD/sweep" --sweep "ECT=$ECT/sweep"
  --sweep "reflow=$REFLOW/sweep")
for d in "$PROG"/steps-*; do
  n="${d##*steps-}"
  "$BIN" eval sweep --model "$d" "${common[@]}" --guidance-scale 1 --runs "ddim:$n" > /dev/null
  sweeps+=(--sweep "progressive=$d/sweep")
done
mkdir -p "$OUT"
"$BIN" eval plot --by nfe --samplers dpmpp_2m,lcm,ddim,flow_euler,flow_euler@1000/500 \
  --title "MNIST 16 px, one teacher, four students" --output "$OUT" "${sweeps[@]}"
"$PY" tools/eval/grid_row.py "$OUT/grids.png" \
  "CD, 1 step=$CD/sweep/grid-lcm-1.png" "ECT, 1 step=$ECT/sweep/grid-lcm-1.png" \
  "progressive, 1 step=$PROG/steps-1/sweep/grid-ddim-1.png" \
  "reflow, 1 step=$REFLOW/sweep/grid-flow_euler-1.png" \
  "teacher, DPM-Solver++ 10=$TEACHER/sweep/grid-dpmpp_2m-10.png"
echo "plots and grids in $OUT"

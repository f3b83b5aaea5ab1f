#!/usr/bin/env bash
# The 32 px ablation behind examples/mnist32.toml (issue #24): each cell is a start recipe with a
# few keys changed, trained for the same minutes at 2 threads, one cell at a time, then sampled
# (1000 images, the pipeline's recorded sampler, steps, guidance and interval) and judged by the
# MNIST classifier against the 10,000 test digits. Rows go to OUT/table.jsonl.
# The start is the quick start's recipe at 32 px (its network, batch 32, uniform σ, EMA 0.999);
# the cell `recipe` is examples/mnist32.toml as it is, which the ablation chose.
# Usage: tools/eval/ablation32.sh MINUTES OUT CELL...   (cells: see `cell` below; NAME+KEY=V+…
# adds --set KEY=V on top of a named cell)
set -euo pipefail
MIN="$1"; OUT="$2"; shift 2
BIN="${DIFFUSE:-target/release/diffuse}"
mkdir -p "$OUT"
net3() { printf '%s\n' "model.block_out_channels=$1" \
  'model.down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]' \
  'model.up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]'; }
net4() { printf '%s\n' "model.block_out_channels=$1" \
  "model.down_block_types=[\"DownBlock2D\", \"DownBlock2D\", $2]" \
  "model.up_block_types=[$3, \"UpBlock2D\", \"UpBlock2D\"]"; }
start() { printf '%s\n' data.batch_size=32 'train.flow_sigma_sampling="uniform"' \
  train.ema_decay=0.999 'train.posthoc_ema=[]'; }
one_attn=('"DownBlock2D", "AttnDownBlock2D"' '"AttnUpBlock2D", "UpBlock2D"')
two_attn=('"AttnDownBlock2D", "AttnDownBlock2D"' '"AttnUpBlock2D", "AttnUpBlock2D"')
cell() {
  case "$1" in
    recipe) ;;
    base) start; net3 "[32, 64, 64]" ;;
    narrow) start; net3 "[16, 32, 64]" ;;
    deep4) start; net4 "[16, 32, 64, 64]" "${one_attn[@]}" ;;
    deep4-attn2) start; net4 "[16, 32, 64, 64]" "${two_attn[@]}" ;;
    deep4-wide) start; net4 "[32, 64, 64, 128]" "${one_attn[@]}" ;;
    *) echo "unknown cell $1" >&2; exit 2 ;;
  esac
}
for spec in "$@"; do
  # A cell is NAME or NAME+KEY=VALUE+… (extra --set on top of the named cell).
  IFS='+' read -r name extra <<< "$spec"
  sets=(); while IFS= read -r s; do [[ -n "$s" ]] && sets+=(--set "$s"); done < <(cell "$name")
  if [[ -n "${extra:-}" ]]; then IFS='+' read -ra kv <<< "$extra"; for s in "${kv[@]}"; do sets+=(--set "$s"); done; fi
  dir="$OUT/$spec"
  [[ -d "$dir/scheduler" ]] || "$BIN" --threads 2 train --config examples/mnist32.toml \
      --set "train.max_minutes=$MIN" "${sets[@]}" --output "$dir" --quiet
  "$BIN" --threads 2 eval --model "$dir" --real mnist --real-split test --features mnist \
      --metrics fid,cls,pr --num-samples 1000 --json --quiet > "$dir/eval.json"
  python3 - "$dir" "$spec" "$OUT/table.jsonl" <<'PY'
import json, sys
run, spec, table = sys.argv[1:]
m = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
e = json.load(open(f"{run}/eval.json"))
row = {"cell": spec, "steps": m[-1]["step"], "train_s": round(m[-1]["time_s"], 1), **e}
open(table, "a").write(json.dumps(row) + "\n")
print(json.dumps(row))
PY
done
# The table so far, as docs/quality.md shows it.
python3 - "$OUT/table.jsonl" <<'PY' | tee "$OUT/table.md"
import json, sys
print("| cell | steps | train s | classifier-FID | class accuracy | precision | recall |")
print("|---|---:|---:|---:|---:|---:|---:|")
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"| `{r['cell']}` | {r['steps']} | {r['train_s']:.0f} | {r['fid']:.2f} | "
          f"{100 * r['class_accuracy']:.1f} % | {r['precision']:.3f} | {r['recall']:.3f} |")
PY

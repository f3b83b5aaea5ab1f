#!/usr/bin/env bash
# The deployment table of docs/deploy.md (issue #12): fp32, int8 (`diffuse quantize`), pruned-50 %
# + fine-tuned (`diffuse prune` + `diffuse train` with train.init_from) and pruned + int8 of one
# model, and as a control the unpruned model fine-tuned the same way, each measured the same way
# by `diffuse eval sweep`: network weights on disk, parameters, GFLOPs per call, sampling
# images/s, classifier-FID, precision/recall and class accuracy.
#
# 1. (once) prune BASE's EMA network, fine-tune it for FT_STEPS steps on one thread
#    (examples/mnist-eps-finetune.toml), quantise BASE and the fine-tuned model; fine-tune BASE
#    itself with the same recipe (the control: what the extra training alone does);
# 2. (every run) clear the old measurements and sweep all four models back to back with the same
#    thread count (THREADS), sampler and seed: classifier-FID, precision/recall, class accuracy
#    and the sweep's images/s; then time `diffuse sample` (TIMING_SAMPLES images, batch 100) of
#    the four models in turn, ROUNDS times, and report the median and range per model, so that
#    load from other jobs on the machine hits every model alike.
#
# Usage: tools/eval/deploy_table.sh [BASE=runs/mnist-eps8k] [OUT=runs/deploy] [SAMPLES=1000]
# Env: THREADS (1), RUNS (ddim:20), FT_STEPS (4000), ROUNDS (5), TIMING_SAMPLES (200),
#      DIFFUSE (target/release/diffuse)
set -euo pipefail
BASE="${1:-runs/mnist-eps8k}"; OUT="${2:-runs/deploy}"; N="${3:-1000}"
BIN="${DIFFUSE:-target/release/diffuse}"
THREADS="${THREADS:-1}"; RUNS="${RUNS:-ddim:20}"; FT_STEPS="${FT_STEPS:-4000}"
ROUNDS="${ROUNDS:-5}"; TN="${TIMING_SAMPLES:-200}"
mkdir -p "$OUT"

# 1. The compressed models (skipped when present).
[[ -d "$OUT/int8" ]] || "$BIN" quantize --model "$BASE" --output "$OUT/int8"
[[ -d "$OUT/pruned50" ]] || "$BIN" prune --model "$BASE" --output "$OUT/pruned50" --amount 0.5
[[ -d "$OUT/pruned50-ft/unet_ema" ]] || DIFFUSE_THREADS=1 "$BIN" train \
  --config examples/mnist-eps-finetune.toml --set "train.init_from=\"$OUT/pruned50\"" \
  --max-steps "$FT_STEPS" --output "$OUT/pruned50-ft" --quiet
[[ -d "$OUT/pruned50-ft-int8" ]] || "$BIN" quantize --model "$OUT/pruned50-ft" --output "$OUT/pruned50-ft-int8"
[[ -d "$OUT/fp32-ft/unet_ema" ]] || DIFFUSE_THREADS=1 "$BIN" train \
  --config examples/mnist-eps-finetune.toml --set "train.init_from=\"$BASE\"" \
  --max-steps "$FT_STEPS" --output "$OUT/fp32-ft" --quiet

# 2. One measurement of all four, back to back.
models=("fp32=$BASE" "int8=$OUT/int8" "pruned50-ft=$OUT/pruned50-ft" "pruned50-ft-int8=$OUT/pruned50-ft-int8"
        "fp32-ft=$OUT/fp32-ft")
rm -rf "$OUT"/sweep-* "$OUT/timing"
for m in "${models[@]}"; do
  name="${m%%=*}"; dir="${m#*=}"
  "$BIN" --threads "$THREADS" eval sweep --model "$dir" --runs "$RUNS" --real mnist --features mnist \
    --metrics fid,pr,cls --num-samples "$N" --guidance-scale 2 --real-row false \
    --output "$OUT/sweep-$name" --quiet > /dev/null
done
row="${RUNS%%,*}"; mkdir -p "$OUT/timing"
for r in $(seq "$ROUNDS"); do
  for m in "${models[@]}"; do
    name="${m%%=*}"; dir="${m#*=}"
    "$BIN" --threads "$THREADS" sample --model "$dir" --sampler "${row%%:*}" --steps "${row##*:}" \
      --guidance-scale 2 --class $((r % 10)) --num-images "$TN" --batch-size 100 --seed "$r" \
      --output "$OUT/timing/$name.safetensors" --quiet 2>&1 \
      | sed -n "s/.*(\([0-9.]*\) images\/s.*/$name $r \1/p" >> "$OUT/timing/rates.txt"
  done
done
python3 - "$OUT" "$THREADS" "$ROUNDS" "$TN" "${models[@]}" <<'PY'
import json, os, statistics, struct, sys
out, threads, rounds, tn = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
models = [m.split("=", 1) for m in sys.argv[5:]]
rates = {}
for line in open(f"{out}/timing/rates.txt"):
    name, _, v = line.split()
    rates.setdefault(name, []).append(float(v))

def net_dir(d):
    """The network folder sampling loads: EMA first, as diffuse's ModelFolder::net_dir."""
    if not os.path.exists(f"{d}/model_index.json"):
        return d
    for c in ("unet_ema", "unet", "transformer_ema", "transformer"):
        if os.path.exists(f"{d}/{c}/config.json"):
            return f"{d}/{c}"

def weights(d):
    files = [f"{d}/{f}" for f in os.listdir(d) if f.endswith(".safetensors")]
    size, params = 0, 0
    for f in files:
        size += os.path.getsize(f)
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__" and not k.endswith("_scale"):
                p = 1
                for s in v["shape"]:
                    p *= s
                params += p
    return size, params

rows = []
for name, d in models:
    size, params = weights(net_dir(d))
    for r in (json.loads(l) for l in open(f"{out}/sweep-{name}/table.jsonl") if l.strip()):
        rows.append({"model": name, "folder": d, "weights_bytes": size, "parameters": params,
                     "sampler": r["sampler"], "steps": r["steps"], "num_samples": r["num_samples"],
                     "threads": r["threads"], "gflops": r["gflops"], "images_per_s": r["images_per_s"],
                     "sample_s": r["sample_s"], "fid": r["fid"], "precision": r["precision"],
                     "recall": r["recall"], "class_accuracy": r["class_accuracy"],
                     "timed_images_per_s": rates[name]})
ft = {m: [json.loads(l) for l in open(f"{out}/{m}/metrics.jsonl") if l.strip()][-1]
      for m in ("pruned50-ft", "fp32-ft")}
with open(f"{out}/table.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
lines = ["Fine-tunes (one thread): " + ", ".join(f"{m} {r['step']} steps in {r['time_s']:.0f} s"
                                                for m, r in ft.items()) + ". "
         f"Sampling: {rows[0]['sampler']} {rows[0]['steps']} steps, guidance 2, {threads} thread(s); "
         f"metrics and sweep images/s over {rows[0]['num_samples']} samples per model, models one "
         f"after the other; timed images/s: median [min–max] of {rounds} rounds of {tn} images, "
         f"the models in turn within each round.", "",
         "| model | network weights on disk | parameters | GFLOPs/call | images/s timed | images/s sweep | classifier-FID ↓ | precision ↑ | recall ↑ | class acc. ↑ |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    t = r["timed_images_per_s"]
    lines.append(f"| {r['model']} | {r['weights_bytes'] / 1e6:.2f} MB ({r['weights_bytes']} B) | "
                 f"{r['parameters']:,} | {r['gflops']:.3f} | "
                 f"{statistics.median(t):.1f} [{min(t):.1f}–{max(t):.1f}] | {r['images_per_s']:.1f} | "
                 f"{r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['class_accuracy']:.3f} |")
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

#!/usr/bin/env bash
# UNet vs DiT on 16-px MNIST at two sizes each, the same wall-clock training budget (issue #10):
# ε-prediction, class-conditional (10 % label drop), batch 32, and the same optimizer for all
# four (AdamW lr 5e-4 after a 100-step warm-up, EMA 0.999) so only the network differs. Two runs
# train at a time, one thread each (UNet and DiT of one size side by side, same machine load);
# then `diffuse eval sweep` measures each (classifier-FID, class accuracy, GFLOPs, images/s).
# Usage: tools/eval/unet_vs_dit.sh [MINUTES=8] [OUT=runs/unet-vs-dit] [SAMPLES=1000]
set -euo pipefail
MIN="${1:-8}"; OUT="${2:-runs/unet-vs-dit}"; N="${3:-1000}"
BIN="${DIFFUSE:-target/release/diffuse}"
mkdir -p "$OUT"
common=(--max-steps 1000000 --set "train.max_minutes=$MIN" --set 'train.lr_scheduler="constant_with_warmup"'
        --set train.lr_warmup_steps=100 --set train.learning_rate=5e-4 --set train.ema_decay=0.999
        --set train.adam_weight_decay=0.0 --set train.snr_gamma=5.0 --set train.sample_every=0
        --set train.checkpoint_every=100000 --set scheduler.clip_sample=false
        --set 'scheduler.timestep_spacing="trailing"' --quiet)
unet_s=(--config examples/mnist-eps.toml)
unet_l=(--config examples/mnist-eps.toml --set 'model.block_out_channels=[64, 128, 128]'
        --set model.layers_per_block=2 --set model.attention_head_dim=32)
dit_s=(--config examples/dit-mnist.toml)
dit_l=(--config examples/dit-mnist.toml --set model.attention_head_dim=64 --set model.num_layers=8)
run() { local name="$1"; shift; [[ -d "$OUT/$name/scheduler" ]] || DIFFUSE_THREADS=1 "$BIN" train "$@" --output "$OUT/$name" "${common[@]}"; }
run unet-s "${unet_s[@]}" & run dit-s "${dit_s[@]}" & wait
run unet-l "${unet_l[@]}" & run dit-l "${dit_l[@]}" & wait
for m in unet-s dit-s unet-l dit-l; do
  "$BIN" eval sweep --model "$OUT/$m" --runs ddim:20 --real mnist --features mnist \
    --metrics fid,cls,is --num-samples "$N" --guidance-scale 2 --real-row false \
    --output "$OUT/$m/sweep" --quiet > /dev/null
  python3 - "$OUT/$m" <<'PY'
import json, sys
run = sys.argv[1]
last = [json.loads(l) for l in open(f"{run}/metrics.jsonl")][-1]
row = [json.loads(l) for l in open(f"{run}/sweep/table.jsonl")][-1]
print(json.dumps({"model": run, "steps": last["step"], "train_images_per_s": last["images_per_s"],
                  "gflops": row["gflops"], "fid": row["fid"], "class_accuracy": row["class_accuracy"],
                  "sample_images_per_s": row["images_per_s"]}))
PY
done | tee "$OUT/summary.jsonl"

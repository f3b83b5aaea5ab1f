#!/usr/bin/env bash
# Latent vs pixel diffusion on MNIST at 32 px with the same wall-clock training budget
# (issue #9): a VAE is trained and MNIST encoded once (not counted in the budget), then a
# latent UNet and a pixel UNet train side by side for MINUTES each (one thread each, so both
# see the same machine), and `diffuse eval sweep` measures each with classifier-FID, class
# accuracy and sampling images/s (two threads, one model after the other).
# Usage: tools/eval/latent_vs_pixel.sh [MINUTES=15] [OUT=runs/latent-vs-pixel]
set -euo pipefail
MIN="${1:-15}"; OUT="${2:-runs/latent-vs-pixel}"
BIN="${DIFFUSE:-target/release/diffuse}"
mkdir -p "$OUT"
# 1. The VAE (32 px, 4×8×8 latents) and the latent cache.
[[ -d "$OUT/vae/vae_ema" ]] || "$BIN" train --config examples/vae-mnist.toml --output "$OUT/vae" \
  --set 'data.fit="resize"' --quiet
[[ -f "$OUT/latents/latents.json" ]] || "$BIN" data encode --vae "$OUT/vae/vae_ema" --data mnist \
  --size 32 --fit resize --output "$OUT/latents" --quiet
# 2. Both UNets at once, one thread each, the same budget; constant LR after warm-up since
#    neither knows how many steps it will reach.
common=(--max-steps 1000000 --set "train.max_minutes=$MIN" --set 'train.lr_scheduler="constant_with_warmup"'
        --set train.sample_every=0 --set train.checkpoint_every=1000 --quiet)
[[ -d "$OUT/latent/unet_ema" ]] || DIFFUSE_THREADS=1 "$BIN" train --config examples/latent-mnist.toml \
  --output "$OUT/latent" --set "data.latents=\"$OUT/latents\"" "${common[@]}" &
[[ -d "$OUT/pixel/unet_ema" ]] || DIFFUSE_THREADS=1 "$BIN" train --config examples/mnist.toml \
  --output "$OUT/pixel" --set data.size=32 "${common[@]}" &
wait
# 3. The same measurement of both.
for m in latent pixel; do
  "$BIN" eval sweep --model "$OUT/$m" --runs flow_euler:10,flow_euler:25 --real mnist \
    --features mnist --metrics fid,cls,is --num-samples 1000 --guidance-scale 2 \
    --output "$OUT/$m/sweep" --quiet
  tail -1 "$OUT/$m/metrics.jsonl" | python3 -c 'import json, sys; r = json.load(sys.stdin); print(sys.argv[1], r["step"], "steps,", round(r["images_per_s"], 1), "train images/s")' "$m"
done

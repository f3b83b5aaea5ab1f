#!/usr/bin/env bash
# Puts what tools/cuda/gpu_bench.sh needs besides the binaries into .device/:
# - unet6m/: a random-weight 6.47 M-parameter DDPMPipeline (1×32×32, channels 64/128/128,
#   attention at 8×8, DDIMScheduler), f16 on disk, made with the pinned diffusers venv;
# - pylib.tar.xz: diffusers 0.42.1 and the pure-Python packages it needs (plus cp310–cp313 builds
#   of its compiled ones), pinned as in tools/fixtures/requirements.txt, for the GPU machine's
#   torch (which has no internet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash tools/fixtures/setup.sh >/dev/null
mkdir -p .device
PYTHONWARNINGS=ignore tools/fixtures/.venv/bin/python - <<'PY'
import torch
from diffusers import UNet2DModel, DDIMScheduler, DDPMPipeline
torch.manual_seed(0)
unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(64, 128, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=2, norm_num_groups=32, attention_head_dim=8)
DDPMPipeline(unet=unet.to(torch.float16), scheduler=DDIMScheduler()).save_pretrained(".device/unet6m")
PY
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
pin() { grep -iE "^$1==" tools/fixtures/requirements.txt; }
for p in diffusers huggingface_hub filelock fsspec packaging requests urllib3 idna certifi tqdm \
         typing_extensions importlib_metadata zipp httpx2 httpcore2 anyio h11 click truststore; do
  pip download -q --no-deps --only-binary :all: -d "$W/pure" "$(pin "$p")"
done
for v in 310 311 312 313; do
  for p in safetensors regex PyYAML charset-normalizer hf-xet; do
    pip download -q --no-deps --only-binary :all: --python-version "$v" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -d "$W/bin$v" "$(pin "$p")"
  done
done
mkdir -p "$W/pylib"
for w in "$W"/pure/*.whl "$W"/bin*/*.whl; do python3 -m zipfile -e "$w" "$W/pylib/"; done
find "$W/pylib" -name tests -type d -prune -exec rm -rf {} +
tar -cJf .device/pylib.tar.xz -C "$W" pylib
du -sh .device

#!/usr/bin/env bash
# Run ON the GPU machine from the repo root, with `.device/` carried (tools/cuda/build.sh and
# tools/cuda/prepare_bench.sh make it: the binaries, the
# 6.5 M-parameter DDIM pipeline .device/unet6m, and .device/pylib.tar.xz = diffusers 0.42.1 and
# its pure-Python deps for the torch already installed there):
#   OUT=/some/dir bash tools/cuda/gpu_bench.sh
# 1. device_check.sh (CUDA libs, nvidia-smi, diffuse-core parity on CUDA and CPU);
# 2. UNet parity on CUDA: `diffuse sample --device cuda` of the fixture pipeline on recorded
#    noise vs diffusers' CPU loop;
# 3. the same DDIM-50 sampling of 256 images (one batch) on the same GPU by PyTorch/diffusers
#    and by diffuse, from the same noise: images/s of each and the difference of the results.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
OUT="${OUT:-/tmp/gpu_bench}"
mkdir -p "$OUT"

bash tools/cuda/device_check.sh 2>&1 | tee "$OUT/device_check.log"
check_rc=${PIPESTATUS[0]}
LD_LIBRARY_PATH="$(sed -n 's/^LD_LIBRARY_PATH=//p' "$OUT/device_check.log" | tail -1)"
export LD_LIBRARY_PATH

PY=""
for p in python3 /usr/bin/python3 /usr/local/bin/python3 /opt/conda/bin/python3; do
  command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1 && { PY="$p"; break; }
done
mkdir -p /tmp/pylib && tar -xJf .device/pylib.tar.xz -C /tmp/pylib
export PYTHONPATH="/tmp/pylib/pylib${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1

FIX=crates/diffuse-models/tests/fixtures
echo "== UNet on CUDA vs diffusers (fixture pipeline, 5 steps, recorded noise)"
for s in ddim dpmpp_2m; do
  .device/diffuse sample --device cuda --model $FIX/pipeline_basic --steps 5 --sampler $s \
    --noise $FIX/pipeline_basic/samples.safetensors --output "$OUT/fixture_$s.safetensors" --quiet
done
"$PY" - "$OUT" "$FIX" <<'PYEOF'
import sys, torch
from safetensors.torch import load_file
out, fix = sys.argv[1], sys.argv[2]
ref = load_file(f"{fix}/pipeline_basic/samples.safetensors")
for s, k in [("ddim", "ddim_images"), ("dpmpp_2m", "dpmpp_images")]:
    a = load_file(f"{out}/fixture_{s}.safetensors")["images"]; b = ref[k]
    print(f"cuda {s} vs diffusers: max rel err {float((a - b).abs().max() / b.abs().max()):.3e}")
PYEOF

echo "== DDIM-50, 256 images of the 6.5 M-param UNet (1x32x32), one batch, same GPU"
"$PY" - "$OUT" <<'PYEOF'
import sys, time, json, torch
from safetensors.torch import save_file
# The GPU machine's transformers wants an older huggingface_hub than diffusers 0.42.1 carries:
# tell diffusers that transformers/peft are absent (a UNet2DModel needs neither).
import diffusers.utils.import_utils as iu
iu._transformers_available = False
iu._peft_available = False
from diffusers import UNet2DModel, DDIMScheduler
out = sys.argv[1]
torch.manual_seed(0)
noise = torch.randn(256, 1, 32, 32)
save_file({"noise": noise.contiguous()}, f"{out}/noise256.safetensors")
unet = UNet2DModel.from_pretrained(".device/unet6m/unet", torch_dtype=torch.float32).cuda().eval()
sched = DDIMScheduler.from_pretrained(".device/unet6m/scheduler")
res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
def run(steps):
    sched.set_timesteps(steps); x = noise.cuda()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    torch.cuda.synchronize(); return x
for tf32 in [True, False]:
    torch.backends.cudnn.allow_tf32 = tf32; torch.backends.cuda.matmul.allow_tf32 = tf32
    run(3)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter(); x = run(50); ts.append(time.perf_counter() - t0)
    t = sorted(ts)[1]
    res[f"torch_tf32_{tf32}"] = {"seconds": t, "images_per_s": 256 / t}
    print(f"torch (cudnn/matmul TF32={tf32}): {t:.3f} s, {256/t:.1f} images/s")
    save_file({"images": x.float().cpu().contiguous()}, f"{out}/torch_images_tf32_{tf32}.safetensors")
    if not tf32:
        save_file({"images": run(1).float().cpu().contiguous()}, f"{out}/torch_step1.safetensors")
json.dump(res, open(f"{out}/torch.json", "w"), indent=1)
PYEOF

.device/diffuse sample --device cuda --model .device/unet6m --steps 3 --noise "$OUT/noise256.safetensors" \
  --batch-size 256 --output /tmp/warm.safetensors --quiet
for i in 1 2 3; do
  .device/diffuse sample --device cuda --model .device/unet6m --steps 50 --sampler ddim \
    --noise "$OUT/noise256.safetensors" --batch-size 256 --output "$OUT/diffuse_images.safetensors" --quiet 2>&1 | tee -a "$OUT/diffuse_cuda.log"
done
.device/diffuse sample --device cuda --model .device/unet6m --steps 1 --sampler ddim \
  --noise "$OUT/noise256.safetensors" --batch-size 256 --output "$OUT/diffuse_step1.safetensors" --quiet
echo "== diffuse on this machine's CPU (32 images, DDIM-10) for scale"
nproc
timeout 240 .device/diffuse sample --device cpu --model .device/unet6m --steps 10 --num-images 32 \
  --batch-size 32 --output /tmp/cpu.safetensors --quiet 2>&1 | tee "$OUT/diffuse_cpu.log"
"$PY" - "$OUT" <<'PYEOF'
import sys
from safetensors.torch import load_file
out = sys.argv[1]
L = lambda n: load_file(f"{out}/{n}.safetensors")["images"]
r = lambda a, b: float((a - b).abs().max() / b.abs().max())
print(f"one DDIM step (one UNet call, batch 256): diffuse CUDA vs torch CUDA fp32: max rel err {r(L('diffuse_step1'), L('torch_step1')):.3e}")
print(f"DDIM-50 final images: diffuse CUDA vs torch fp32: {r(L('diffuse_images'), L('torch_images_tf32_False')):.3e}; torch TF32 vs torch fp32: {r(L('torch_images_tf32_True'), L('torch_images_tf32_False')):.3e}")
PYEOF
rm -f "$OUT"/*.safetensors
exit $check_rc

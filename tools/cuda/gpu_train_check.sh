#!/usr/bin/env bash
# Run ON the GPU machine from the repo root, with .device/ carried (tools/cuda/build.sh makes the
# binaries, now with NCCL; tools/cuda/prepare_bench.sh adds pylib.tar.xz for step 5):
#   OUT=/some/dir bash tools/cuda/gpu_train_check.sh          # ~3-5 min on one H100
#   BENCH=0 ... skips step 5 (the PyTorch bf16 comparison)
# What issue #13 could not run without a GPU, in one go:
# 1. device_check.sh: CUDA + NCCL libraries, nvidia-smi, diffuse-core parity on CUDA and CPU;
# 2. bf16 inference on CUDA: `sample --dtype bf16` (and f16) of the fixture pipeline vs f32;
# 3. the bf16 training step: `diffuse bench --only train` f32 vs bf16 (mnist32, batch 32), and a
#    short `train.mixed_precision = "bf16"` run (loss falls, checkpoints f32);
# 4. the NCCL path: `diffuse train --gpus 1` (launcher, TCP rendezvous, NCCL communicator,
#    device all-reduce every step) vs a plain CUDA run of the same config: the weights must agree
#    (a group of one divides by 1: expect 0); with >= 2 GPUs also `--gpus 2` vs `--gpus 1`
#    (expect ~1e-6 relative: float summation order);
# 5. bench/run --device cuda --dtype bf16 --quick --models mnist32: diffuse vs PyTorch autocast
#    bf16 on the same GPU (into $OUT/bench_bf16/).
# Every number lands in $OUT/gpu_train_check.log; the exit code is non-zero if a check failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
OUT="${OUT:-/tmp/gpu_train_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_train_check.log"
exec > >(tee -a "$LOG") 2>&1
FAIL=0
fail() { echo "CHECK FAILED: $*"; FAIL=1; }

echo "== 1. device_check.sh"
bash tools/cuda/device_check.sh > "$OUT/device_check.log" 2>&1
echo "device_check exit $?"; grep -E "NOT FOUND|STUB|summary|test result" "$OUT/device_check.log"
LD_LIBRARY_PATH="$(sed -n 's/^LD_LIBRARY_PATH=//p' "$OUT/device_check.log" | tail -1)"
export LD_LIBRARY_PATH
D=.device/diffuse
[[ -x $D ]] || { echo "no $D (run tools/cuda/build.sh first)"; exit 2; }
PY=""
for p in python3 /usr/bin/python3 /usr/local/bin/python3 /opt/conda/bin/python3; do
  command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch, safetensors' >/dev/null 2>&1 && { PY="$(command -v "$p")"; break; }
done
[[ -n $PY ]] || echo "(no python3 with torch + safetensors: comparisons below are skipped)"
# max |a - b| / max |a| over the common tensors of two safetensors files.
rel() {
  [[ -n $PY ]] || { echo "n/a"; return; }
  "$PY" - "$1" "$2" <<'PYEOF'
import sys
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
d = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
m = max(float(a[k].double().abs().max()) for k in a)
print(f"{d / m:.3e}")
PYEOF
}
below() { [[ -n $PY ]] || return 0; "$PY" -c "import sys; sys.exit(0 if float('$1') <= float('$2') else 1)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
NGPU="$(nvidia-smi -L 2>/dev/null | wc -l)"

echo "== 2. bf16/f16 inference on CUDA (fixture pipeline, DDIM 5, recorded noise)"
FIX=crates/diffuse-models/tests/fixtures/pipeline_basic
for dt in f32 bf16 f16; do
  $D sample --device cuda --dtype $dt --model $FIX --steps 5 --sampler ddim --noise $FIX/samples.safetensors \
    --output "$OUT/sample_$dt.safetensors" --quiet || fail "sample --dtype $dt"
done
for dt in bf16 f16; do
  e="$(rel "$OUT/sample_f32.safetensors" "$OUT/sample_$dt.safetensors")"
  echo "sample $dt vs f32 on CUDA: max-abs rel $e (CPU measured 4.8e-3 bf16, 6.4e-4 f16)"
  below "$e" 3e-2 || fail "sample $dt vs f32: $e"
done

echo "== 3. the bf16 training step"
for dt in f32 bf16; do
  $D bench --device cuda --preset mnist32 --only train --dtype $dt --runs 10 --warmup 3 \
    --json "$OUT/bench_train_$dt.json" 2>&1 | grep -E "train_b|model" || fail "bench --dtype $dt"
done
TINY=examples/tiny.toml
COMMON=(--config $TINY --max-steps 40 --set data.batch_size=32 --set train.checkpoint_every=20 --quiet)
$D train --device cuda "${COMMON[@]}" --output "$OUT/tiny_f32" || fail "f32 train"
$D train --device cuda "${COMMON[@]}" --set 'train.mixed_precision="bf16"' --output "$OUT/tiny_bf16" || fail "bf16 train"
if [[ -n $PY ]]; then
  "$PY" - "$OUT" <<'PYEOF' || FAIL=1
import json, sys
from safetensors.torch import load_file
out = sys.argv[1]
ok = True
for run in ["tiny_f32", "tiny_bf16"]:
    rows = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl")]
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    print(f"{run}: loss {first:.4f} -> {last:.4f}, {rows[-1]['images_per_s']:.1f} images/s")
    ok &= last < 0.7 * first
dt = {str(t.dtype) for t in load_file(f"{out}/tiny_bf16/unet/diffusion_pytorch_model.safetensors").values()}
print(f"bf16 run's saved weights: {dt}")
ok &= dt == {"torch.float32"}
sys.exit(0 if ok else 1)
PYEOF
fi

echo "== 4. NCCL: --gpus 1 vs one plain CUDA process"
COMMON=(--config $TINY --set data.batch_size=16 --set train.checkpoint_every=10 --quiet)
W=unet/diffusion_pytorch_model.safetensors
$D train --device cuda "${COMMON[@]}" --max-steps 10 --output "$OUT/nccl_plain" || fail "plain CUDA train"
$D train --gpus 1 "${COMMON[@]}" --max-steps 10 --master-port 29511 --output "$OUT/nccl_gpus1" || fail "--gpus 1"
e="$(rel "$OUT/nccl_plain/$W" "$OUT/nccl_gpus1/$W")"
echo "--gpus 1 (NCCL all-reduce every step) vs plain: max-abs rel $e (expected 0)"
below "$e" 1e-6 || fail "--gpus 1 differs: $e"
$D train --gpus 1 "${COMMON[@]}" --master-port 29512 --resume "$OUT/nccl_gpus1" --max-steps 12 || fail "--gpus 1 --resume"
if (( NGPU >= 2 )); then
  $D train --gpus 2 "${COMMON[@]}" --max-steps 10 --master-port 29513 --output "$OUT/nccl_gpus2" || fail "--gpus 2"
  e="$(rel "$OUT/nccl_plain/$W" "$OUT/nccl_gpus2/$W")"
  echo "--gpus 2 x 8 rows vs 1 GPU x 16 rows: max-abs rel $e (CPU threads/TCP measured 2.7e-7 .. 4.2e-7)"
  below "$e" 1e-5 || fail "--gpus 2 differs: $e"
else
  echo "(one GPU: the 2-rank NCCL equivalence needs a machine with >= 2 GPUs)"
fi

if [[ "${BENCH:-1}" == 1 && -f .device/pylib.tar.xz && -n $PY ]]; then
  echo "== 5. bench/run --dtype bf16: diffuse vs PyTorch autocast on this GPU"
  mkdir -p /tmp/pylib && tar -xJf .device/pylib.tar.xz -C /tmp/pylib
  PYTHONPATH="/tmp/pylib/pylib${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1 \
    bench/run --device cuda --dtype bf16 --bin $D --python "$PY" --models mnist32 --quick \
    --out "$OUT/bench_bf16" --note "lent GPU, bf16 both sides" 2>&1 | tail -25 || fail "bench/run bf16"
fi
rm -f "$OUT"/sample_*.safetensors
rm -rf "$OUT"/tiny_* "$OUT"/nccl_*/checkpoints
echo "== gpu_train_check: $([[ $FAIL == 0 ]] && echo all checks passed || echo SOME CHECKS FAILED)"
exit $FAIL

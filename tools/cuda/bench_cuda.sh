#!/usr/bin/env bash
# Run ON the GPU machine from the repo root, with .device/ carried (tools/cuda/build.sh and
# tools/cuda/prepare_bench.sh make it):  OUT=/some/dir bash tools/cuda/bench_cuda.sh
# 1. device_check.sh: CUDA libraries, diffuse-core parity on CUDA and CPU;
# 2. bench/run --device cuda with the prebuilt binary and the machine's torch (+ diffusers
#    0.42.1 from .device/pylib.tar.xz): diffuse vs PyTorch eager fp32 on the same GPU, same
#    weights, outputs checked, into $OUT/latest.{json,md}; DTYPE=bf16 compares bf16 (diffuse's
#    mixed precision vs torch.autocast).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
OUT="${OUT:-/tmp/bench_cuda}"
mkdir -p "$OUT"
bash tools/cuda/device_check.sh > "$OUT/device_check.log" 2>&1
echo "device_check exit $?"; grep -E "test result|passed|failed" "$OUT/device_check.log" | tail -4
LD_LIBRARY_PATH="$(sed -n 's/^LD_LIBRARY_PATH=//p' "$OUT/device_check.log" | tail -1)"
export LD_LIBRARY_PATH
PY=""
for p in python3 /usr/bin/python3 /usr/local/bin/python3 /opt/conda/bin/python3; do
  command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1 && { PY="$(command -v "$p")"; break; }
done
mkdir -p /tmp/pylib && tar -xJf .device/pylib.tar.xz -C /tmp/pylib
export PYTHONPATH="/tmp/pylib/pylib${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
bench/run --device cuda --bin .device/diffuse --python "$PY" --models "${MODELS:-mnist32,cifar64}" \
  --dtype "${DTYPE:-f32}" --out "$OUT" --note "${NOTE:-lent H100, ${DTYPE:-f32} both sides}" ${QUICK:+--quick} 2>&1 | tee "$OUT/bench_run.log"

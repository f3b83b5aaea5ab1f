#!/usr/bin/env bash
# Create tools/cuda/.venv with the CUDA 13.0 toolkit from PyPI wheels (see /work/shared/CUDA.md),
# plus tools/cuda/.venv/cuda-libs/: unversioned libX.so symlinks and a stub libcuda.so for linking.
# Idempotent: does nothing when the venv already holds the pinned set.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
LIBS="$VENV/cuda-libs"
PYTHON="${PYTHON:-python3}"

# CUDA 13.0 only (GPU machines: driver 580). nvvm and crt are pinned, or pip pairs nvcc 13.0 with 13.5 parts.
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
  # NCCL for the data-parallel process group (diffuse-train's `cuda` feature links libnccl.so.2).
  nvidia-nccl-cu13==2.28.3
)
want="$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.pins.sha256"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup.sh: creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup.sh: CUDA wheels up to date"
else
  "$VENV/bin/python" -m pip install --disable-pip-version-check "${PINS[@]}"
  # Guard against pip having pulled in parts of another CUDA minor version.
  if "$VENV/bin/python" -m pip freeze --all | grep -E '^nvidia-' | grep -vE '==(13\.0\.|10\.4\.0\.|2\.28\.3)'; then
    echo "setup.sh: non-13.0 nvidia packages above; remove $VENV and rerun" >&2
    exit 1
  fi
fi

CU13="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
for d in bin include lib nvvm; do
  [[ -d "$CU13/$d" ]] || { echo "setup.sh: missing $CU13/$d" >&2; exit 1; }
done
[[ -x "$CU13/bin/nvcc" ]] || { echo "setup.sh: missing $CU13/bin/nvcc" >&2; exit 1; }

# Unversioned symlinks: libX.so -> .../libX.so.N (the wheels ship only versioned names).
mkdir -p "$LIBS"
shopt -s nullglob
for f in "$CU13"/lib/lib*.so.*; do
  base="$(basename "$f")"
  name="${base%%.so.*}.so"
  [[ -e "$CU13/lib/$name" ]] && continue   # an unversioned file already ships
  ln -sfn "$f" "$LIBS/$name"
done
# NCCL ships in its own folder (nvidia/nccl/lib/libnccl.so.2).
NCCL_LIB="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "nccl", "lib"))')"
for f in "$NCCL_LIB"/libnccl.so.*; do
  ln -sfn "$f" "$LIBS/libnccl.so"
done
shopt -u nullglob

# Stub libcuda.so (SONAME libcuda.so.1) for -lcuda at link time; the driver's real libcuda.so.1 is
# used at run time. It must DEFINE the driver API symbols: an empty stub leaves cudarc's cu* calls
# undefined ("rust-lld: error: undefined symbol: cuModuleGetFunction"), since candle makes cudarc
# link dynamically. So: one dummy function per cu* identifier of the CUDA 13.0 driver headers
# (the API names and the _v2/_v3/_ptsz names their macros map to).
if ! nm -D --defined-only "$LIBS/libcuda.so" 2>/dev/null | grep -q ' cuModuleGetFunction$' \
   || ! readelf -d "$LIBS/libcuda.so" 2>/dev/null | grep -q 'SONAME.*\[libcuda\.so\.1\]'; then
  tmp="$(mktemp -d)"
  shopt -s nullglob
  headers=("$CU13"/include/cuda.h "$CU13"/include/cudaProfiler*.h)
  shopt -u nullglob
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "${headers[@]}" | LC_ALL=C sort -u \
    | awk '{print "void " $0 "(void) {}"}' > "$tmp/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so" "$tmp/stub.c"
  mv -f "$tmp/libcuda.so" "$LIBS/libcuda.so"
  rm -rf "$tmp"
  echo "setup.sh: stub libcuda.so with $(nm -D --defined-only "$LIBS/libcuda.so" | grep -c ' T cu') symbols"
fi

# Fallback libcurand.so.10 for the GPU machine, shipped by build.sh as .device/lib-fallback/: newer
# torch wheels (e.g. 2.15+cu132) no longer depend on nvidia-curand, so the runtime libs there may
# lack it, while the binaries NEED it (BIND_NOW). candle's CudaDevice::new creates a curand generator,
# so create/seed/set-stream/destroy succeed; every generate call fails with
# CURAND_STATUS_NOT_INITIALIZED (diffuse draws its noise on the host and never calls them).
FALLBACK="$LIBS/fallback"
# The real library versions its symbols (node "libcurand.so.10") and the binaries ask for that
# version, so the stub defines it too.
if ! objdump -T "$FALLBACK/libcurand.so.10" 2>/dev/null | grep -qE 'libcurand\.so\.10\s+curandGenerateNormal$'; then
  mkdir -p "$FALLBACK"
  tmp="$(mktemp -d)"
  {
    echo 'static int generator;'
    echo 'int curandCreateGenerator(void **g, int t) { (void)t; *g = &generator; return 0; }'
    echo 'int curandCreateGeneratorHost(void **g, int t) { (void)t; *g = &generator; return 0; }'
    echo 'int curandDestroyGenerator(void *g) { (void)g; return 0; }'
    echo 'int curandSetStream(void *g, void *s) { (void)g; (void)s; return 0; }'
    echo 'int curandSetPseudoRandomGeneratorSeed(void *g, unsigned long long s) { (void)g; (void)s; return 0; }'
    echo 'int curandSetGeneratorOffset(void *g, unsigned long long o) { (void)g; (void)o; return 0; }'
    echo 'int curandGetVersion(int *v) { *v = 10400; return 0; }'
    grep -ohE '\bcurand[A-Z][A-Za-z0-9_]*\s*\(' "$CU13/include/curand.h" | tr -d ' (' | LC_ALL=C sort -u \
      | grep -vxE 'curand(CreateGenerator|CreateGeneratorHost|DestroyGenerator|SetStream|SetPseudoRandomGeneratorSeed|SetGeneratorOffset|GetVersion)' \
      | awk '{print "int " $0 "() { return 101; }"}'
  } > "$tmp/curand_stub.c"
  echo 'libcurand.so.10 { global: curand*; local: *; };' > "$tmp/curand.map"
  gcc -shared -fPIC -O1 -Wl,-soname,libcurand.so.10 -Wl,--version-script="$tmp/curand.map" \
    -o "$FALLBACK/libcurand.so.10" "$tmp/curand_stub.c"
  rm -rf "$tmp"
  echo "setup.sh: fallback libcurand.so.10 with $(nm -D --defined-only "$FALLBACK/libcurand.so.10" | grep -c ' T curand') symbols"
fi

echo "$want" > "$STAMP"
"$CU13/bin/nvcc" --version | tail -n 2
echo "setup.sh: cuda-libs: $(ls "$LIBS" | tr '\n' ' ')"

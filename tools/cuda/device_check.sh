#!/usr/bin/env bash
# Run ON the GPU machine from the repo root (working tree + .device/ from tools/cuda/build.sh):
#   bash tools/cuda/device_check.sh
# Finds the CUDA 13 runtime libs in the site-packages of the python3 that has torch, then runs
# .device/diffuse --version and the parity tests on CUDA and on CPU. Exits non-zero if the CUDA
# parity run fails (or the binaries are missing).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
echo "== repo: $(pwd)"
# build.sh ships xz-compressed binaries (.device/*.xz; the raw pair is over the 64 MiB carry limit).
echo "== unpacking .device/*.xz"
for b in diffuse parity; do
  if [[ -f ".device/$b.xz" && ( ! -x ".device/$b" || ".device/$b.xz" -nt ".device/$b" ) ]]; then
    if command -v xz >/dev/null 2>&1; then
      xz -dc ".device/$b.xz" > ".device/$b.tmp"
    else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        ".device/$b.xz" ".device/$b.tmp"
    fi || { echo "device_check: cannot unpack .device/$b.xz" >&2; exit 2; }
    chmod 755 ".device/$b.tmp" && mv -f ".device/$b.tmp" ".device/$b"
  fi
  [[ -x ".device/$b" ]] || { echo "device_check: missing .device/$b (run tools/cuda/build.sh)" >&2; exit 2; }
  ls -l ".device/$b"
done

echo "== locating CUDA 13 libraries"
SITE=""
NVDIRS=()
for py in python3 /usr/bin/python3 /usr/local/bin/python3 /opt/conda/bin/python3; do
  command -v "$py" >/dev/null 2>&1 || continue
  "$py" -c 'import torch' >/dev/null 2>&1 || continue
  SITE="$("$py" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)" || SITE=""
  [[ -n "$SITE" ]] || continue
  echo "python: $(command -v "$py") ($("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null))"
  echo "site-packages: $SITE"
  # Every folder of the (namespace) package `nvidia`, in case it spans several site-packages.
  mapfile -t NVDIRS < <("$py" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null)
  break
done
SEARCH=()
for d in "${NVDIRS[@]:-}"; do [[ -n "$d" && -d "$d" ]] && SEARCH+=("$d"); done
if [[ ${#SEARCH[@]} -eq 0 ]]; then
  echo "device_check: no python3 with torch + nvidia packages; searching common prefixes" >&2
  for p in /usr/local/lib /usr/lib /usr/local/cuda/lib64 /opt /root/.local/lib; do [[ -d "$p" ]] && SEARCH+=("$p"); done
fi
declare -a DIRS=()
add_dir() { local d; for d in "${DIRS[@]:-}"; do [[ "$d" == "$1" ]] && return; done; DIRS+=("$1"); }
FALLBACK_USED=""
# libnccl.so.2: the data-parallel process group (diffuse-train's `cuda` feature links it).
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcurand.so.10 libnccl.so.2; do
  f="$(find "${SEARCH[@]}" -name "$lib" \( -type f -o -type l \) 2>/dev/null | head -n1)"
  if [[ -z "$f" ]]; then
    # Elsewhere: a system CUDA 13 toolkit.
    f="$(find /usr/local/cuda*/lib64/ /usr/local/cuda*/targets/x86_64-linux/lib/ -maxdepth 1 -name "$lib" 2>/dev/null | head -n1)"
  fi
  if [[ -n "$f" ]]; then
    echo "$lib -> $f"
    add_dir "$(dirname "$f")"
  elif ldconfig -p 2>/dev/null | grep -q "^\s*$lib "; then
    echo "$lib -> (ld.so cache) $(ldconfig -p | grep -m1 "^\s*$lib " | sed 's/.*=> //')"
  elif [[ -f ".device/lib-fallback/$lib" ]]; then
    echo "$lib -> NOT FOUND; using the STUB .device/lib-fallback/$lib (device RNG calls will fail)"
    FALLBACK_USED+=" $lib"
  else
    echo "$lib -> NOT FOUND"
  fi
done
# Last in the search order: only what nothing else provides is taken from the fallback folder.
[[ -n "$FALLBACK_USED" ]] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(pwd)/.device/lib-fallback"
# nvrtc's builtins live next to libnvrtc (same dir in both the cu13 and per-package layouts).
for d in "${DIRS[@]:-}"; do [[ -n "$d" ]] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
[[ -n "$FALLBACK_USED" ]] && echo "WARNING: stub libraries in use:$FALLBACK_USED"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

echo "== nvidia-smi"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "(nvidia-smi failed)"

echo "== ldd .device/diffuse (missing libs)"
ldd .device/diffuse | grep -i 'not found' || true
echo "== ldd .device/parity (missing libs)"
ldd .device/parity | grep -i 'not found' || true

# Wall time (and peak RSS) of each run: GNU time into a file (so the program's own stderr,
# e.g. a loader error, is left alone), else bash's SECONDS.
TIMEF="$(mktemp)"
trap 'rm -f "$TIMEF"' EXIT
timed() {
  local rc s=$SECONDS
  if [[ -x /usr/bin/time ]] && /usr/bin/time -v -o "$TIMEF" true 2>/dev/null; then
    /usr/bin/time -v -o "$TIMEF" "$@"; rc=$?
    grep -E 'Elapsed \(wall clock\)|Maximum resident|Exit status' "$TIMEF" | sed 's/^\s*/  time: /'
  else
    "$@"; rc=$?
  fi
  echo "  wall: $((SECONDS - s)) s, exit $rc"
  return $rc
}

echo "== .device/diffuse --version"
timed .device/diffuse --version
ver_rc=$?

echo "== parity on CUDA (DIFFUSE_TEST_DEVICE=cuda, --test-threads=1)"
timed env DIFFUSE_TEST_DEVICE=cuda .device/parity --test-threads=1
cuda_rc=$?

echo "== parity on CPU"
timed env -u DIFFUSE_TEST_DEVICE .device/parity
cpu_rc=$?

echo "== summary: diffuse --version rc=$ver_rc, parity cuda rc=$cuda_rc, parity cpu rc=$cpu_rc${FALLBACK_USED:+ (stubs:$FALLBACK_USED)}"
exit $(( cuda_rc != 0 ? 1 : 0 ))

# Source me (bash): environment for building candle's CUDA path from tools/cuda/.venv (run setup.sh first).
_cuda_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_cuda_venv="$_cuda_here/.venv"
_cuda_root="$("$_cuda_venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
_cuda_libs="$_cuda_venv/cuda-libs"

export CUDA_HOME="$_cuda_root" CUDA_PATH="$_cuda_root" CUDA_ROOT="$_cuda_root"
case ":$PATH:" in *":$_cuda_root/bin:"*) ;; *) export PATH="$_cuda_root/bin:$PATH" ;; esac
export CUDARC_CUDA_VERSION=13000
# No nvidia-smi here: target H100/H200 (sm_90a) explicitly.
export CUDA_COMPUTE_CAP=90
case ":${LIBRARY_PATH:-}:" in
  *":$_cuda_libs:"*) ;;
  *) export LIBRARY_PATH="$_cuda_libs:$_cuda_root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}" ;;
esac
case " ${RUSTFLAGS:-} " in
  *" -L native=$_cuda_libs "*) ;;
  *) export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-L native=$_cuda_libs" ;;
esac
unset _cuda_here _cuda_venv _cuda_root _cuda_libs

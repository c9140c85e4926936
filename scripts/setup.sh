#!/usr/bin/env bash
# Installs what mptrain needs to build (Debian packages) when missing, then configures and
# builds into build/. Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests also use python3 (an independent writer of indexed-dataset fixtures and the
# Python binding; pip fetches the cuDNN frontend's headers, venv holds PyTorch for the loss
# check), iproute2 (network namespaces standing in for two hosts), and cargo, rustc and
# golang-go (the Rust and Go bindings, built against the installed library).
packages=(build-essential cmake pkg-config libtomlplusplus-dev libopenblas-dev nlohmann-json3-dev libgtest-dev libgloo-dev
          python3 python3-pip python3-venv iproute2 cargo rustc golang-go)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "mptrain setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# nvcc is found on PATH or in the usual place; without it the CPU-only build is made.
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

# cuDNN's fused attention is driven through the header-only cudnn-frontend, which NVIDIA ships
# as the nvidia-cudnn-frontend wheel: its include/ is unpacked into .deps/ (no Python install).
# Without nvcc, cuDNN or network the build goes on with mptrain's own attention kernels.
frontend_version=1.32.0
frontend=.deps/cudnn-frontend-$frontend_version
if command -v nvcc >/dev/null 2>&1 && [[ ! -f $frontend/include/cudnn_frontend.h ]]; then
  if scripts/fetch_cudnn_frontend.sh "$frontend_version" "$frontend"; then
    echo "mptrain setup: cudnn-frontend $frontend_version headers in $frontend"
  else
    echo "mptrain setup: cudnn-frontend $frontend_version could not be fetched; attention will use mptrain's own kernels" >&2
  fi
fi
[[ -f $frontend/include/cudnn_frontend.h ]] && set -- -DMPT_CUDNN_FRONTEND_DIR="$PWD/$frontend/include" "$@"

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$jobs"

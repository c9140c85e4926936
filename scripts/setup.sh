#!/usr/bin/env bash
# Installs what mptrain needs to build (Debian packages) when missing, then configures and
# builds into build/. Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests also use python3 (an independent writer of indexed-dataset fixtures and the
# Python binding), iproute2 (network namespaces standing in for two hosts), and cargo,
# rustc and golang-go (the Rust and Go bindings, built against the installed library).
packages=(build-essential cmake pkg-config libtomlplusplus-dev libopenblas-dev nlohmann-json3-dev libgtest-dev libgloo-dev
          python3 iproute2 cargo rustc golang-go)
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

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$jobs"

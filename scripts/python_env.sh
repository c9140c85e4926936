#!/usr/bin/env bash
# Creates (once) and checks the virtual environment the tests' Python runs in: PyTorch on the
# CPU, numpy and safetensors, for the loss check of tests/device/verify.sh --cpu-smoke and the
# PyTorch half of the GPU benchmark's smoke test. Never touches the system Python.
#
#   scripts/python_env.sh [VENV]       default VENV: .venv-test at the repository root
#
# Prints the interpreter's path on the last line. An environment that already imports torch,
# numpy and safetensors is used as it is (no network needed); otherwise the packages are
# installed from the package index. The torch wheel for Linux links the NVIDIA CUDA
# libraries (cuBLAS, cuDNN, cuFile, cuSPARSELt, NVSHMEM...) even to run on the CPU, so they
# come with it (about 3 GB): a --no-deps torch does not import. torch is pinned to the
# version the GPU machines carry, so both sides of a check run the same PyTorch.
# Exit status: 0 ready, 1 when it cannot be made ready (the reason on stderr).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/.venv-test}
torch_version=${MPT_TEST_TORCH_VERSION:-2.11.0}
say() { echo "python_env.sh: $*" >&2; }

ready() {
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c 'import torch, numpy, safetensors' >/dev/null 2>&1
}

if ! ready; then
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv" || { say "python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
  fi
  say "installing torch==$torch_version, numpy, safetensors into $venv (a first install downloads ~3 GB)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$torch_version" numpy safetensors >&2 ||
    { say "pip install failed (no network? the environment stays as it was)"; exit 1; }
  ready || { say "$venv/bin/python still cannot import torch, numpy and safetensors"; exit 1; }
fi
echo "$venv/bin/python"

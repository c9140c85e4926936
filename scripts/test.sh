#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (GPU tests skip
# themselves on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# PyTorch on the CPU, in .venv-test, for the loss check's smoke test (cli_gpu_verify_smoke);
# an existing environment is reused with no network. Without one that test skips (under CI
# it fails).
scripts/python_env.sh >/dev/null || echo "test.sh: no Python test environment: cli_gpu_verify_smoke will skip" >&2
cd build
# Many tests run several ranks as threads of one process, each with its own OpenMP team, on
# few cores: threads that spin at barriers while their peers wait for a core slow such runs
# several-fold. Sleeping waiters change no result.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)" "$@"

#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (GPU tests skip
# themselves on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
# Many tests run several ranks as threads of one process, each with its own OpenMP team, on
# few cores: threads that spin at barriers while their peers wait for a core slow such runs
# several-fold. Sleeping waiters change no result.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)" "$@"

#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (GPU tests skip
# themselves on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)" "$@"

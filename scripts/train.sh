#!/usr/bin/env bash
# Quickstart: install what is missing, build, and train a recipe (default recipes/tiny.toml).
#   scripts/train.sh [RECIPE.toml] [section.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
recipe=${1:-recipes/tiny.toml}
shift || true
exec build/mptrain "$recipe" "$@"

#!/usr/bin/env bash
# The GPU throughput benchmark's harness, end to end on the CPU: bench/gpu/run.sh
# --cpu-smoke trains both benchmark models (shrunk) with bench_gpu_train for 2 steps and
# checks the report (PyTorch's half runs only where torch is installed).
# Usage: gpu_bench_smoke.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
source "$src/tests/cli/lib/common.bash"
build=$(dirname "$mptrain")
[[ -x $build/bench_gpu_train ]] || fail "no bench_gpu_train beside $mptrain"
MPT_BACKEND=cpu bash "$src/bench/gpu/run.sh" --cpu-smoke --build-dir "$build" >"$tmp/out" 2>&1 ||
  fail "run.sh --cpu-smoke failed: $(tail -20 "$tmp/out")"
echo "gpu_bench_smoke.sh: ok"

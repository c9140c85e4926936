#!/usr/bin/env bash
# The GPU verification script end to end on the CPU: tests/device/verify.sh --cpu-smoke runs
# the device tests (they skip), and the loss check of the benchmark models, shrunk, against
# PyTorch from mptrain's initial weights on mptrain's batches (fp32: 1e-5 per step; bf16).
# The benchmark's own smoke test is cli_gpu_bench_smoke. PyTorch comes from the test
# environment (scripts/python_env.sh, which scripts/test.sh prepares); without it the test
# is skipped, except under CI, where it fails.
# Usage: gpu_verify_smoke.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
source "$src/tests/cli/lib/common.bash"
build=$(dirname "$mptrain")
if ! python=$("$src/scripts/python_env.sh" 2>"$tmp/env.err" | tail -1) || [[ -z $python ]]; then
  [[ -n ${CI:-} ]] && fail "no Python test environment: $(cat "$tmp/env.err")"
  echo "gpu_verify_smoke.sh: skipped, no Python test environment: $(tail -1 "$tmp/env.err")"
  exit 77
fi
# On a failure every stage's logs and JSON are kept beside the test (its working directory).
keep() { cp "$tmp/results/verify_results.tar.gz" "$PWD/gpu_verify_smoke_results.tar.gz" 2>/dev/null; }
PYTHON=$python bash "$src/tests/device/verify.sh" --cpu-smoke --no-bench --build-dir "$build" \
  --results "$tmp/results" >"$tmp/out" 2>&1 ||
  { keep; fail "verify.sh --cpu-smoke failed (logs in $PWD/gpu_verify_smoke_results.tar.gz): $(tail -30 "$tmp/out")"; }
grep -q '^verdict: PASS' "$tmp/results/verify_table.txt" || fail "no PASS verdict: $(cat "$tmp/results/verify_table.txt")"
for check in cpu_llama_tiny_fp32 cpu_gpt2_tiny_fp32 cpu_llama_tiny_bf16; do
  grep -q "\"status\": \"pass\"" "$tmp/results/parity_$check.json" 2>/dev/null || fail "loss check $check did not pass"
done
echo "gpu_verify_smoke.sh: ok"

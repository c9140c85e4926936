#!/usr/bin/env bash
# Runs the GPU tests (mpt_device_tests: every CUDA op against the CPU oracle) on this
# machine's GPU and prints one line per test with its result and time, then the totals.
#
#   tests/device/run.sh [BUILD_DIR] [--sanitize] [--filter PATTERN]
#
# BUILD_DIR (or MPT_BUILD_DIR): a build that already holds tests/mpt_device_tests, run as it
#   is (for instance one built on another machine and copied here). Without one the script
#   configures and builds build-device/ at the repository root with CUDA for sm_90.
# --sanitize: run the tests under compute-sanitizer --tool memcheck.
# --filter PATTERN: passed to --gtest_filter (e.g. 'CudaCore.*').
# Results go to MPT_DEVICE_RESULTS (default BUILD_DIR/device-results): device_tests.json
# (gtest's report), device_tests.log (the run's output) and summary.txt (the summary table).
# Exit status: 0 when every test passed or skipped, 1 otherwise, 2 on a usage error.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${MPT_BUILD_DIR:-}
sanitize=0
filter=
while [ $# -gt 0 ]; do
  case $1 in
    --sanitize) sanitize=1 ;;
    --filter) [ $# -ge 2 ] || { echo "run.sh: --filter needs a pattern" >&2; exit 2; }; filter=$2; shift ;;
    --filter=*) filter=${1#--filter=} ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) build=$1 ;;
  esac
  shift
done

if [ -z "$build" ]; then
  build=$root/build-device
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  echo "== building $build (CUDA, sm_90)"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMPT_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
  if [ ! -d "$build/tests/CMakeFiles/mpt_device_tests.dir" ]; then
    echo "run.sh: CMake found no CUDA toolkit (nvcc), so there are no device tests to build" >&2
    exit 1
  fi
  cmake --build "$build" -j"$(nproc)" --target mpt_device_tests mptrain_cli
fi
if [ ! -d "$build" ]; then
  echo "run.sh: build directory $build does not exist" >&2
  exit 1
fi
build=$(cd "$build" && pwd)
bin=$build/tests/mpt_device_tests
if [ ! -x "$bin" ]; then
  echo "run.sh: $bin is missing: build the target mpt_device_tests (with CUDA) in $build first" >&2
  exit 1
fi
# A build made elsewhere needs this machine to hold its shared libraries (the CUDA ones).
if command -v ldd >/dev/null && ldd "$bin" | grep -q "not found"; then
  echo "run.sh: $bin needs shared libraries this machine lacks (add their folder to LD_LIBRARY_PATH):" >&2
  ldd "$bin" | grep "not found" >&2
  exit 1
fi

results=${MPT_DEVICE_RESULTS:-$build/device-results}
mkdir -p "$results"
json=$results/device_tests.json
log=$results/device_tests.log
summary=$results/summary.txt
rm -f "$json" "$log" "$summary"

# The tests read recipes from this tree, wherever the build was made.
export MPT_SOURCE_DIR=$root
cmd=("$bin" "--gtest_output=json:$json")
[ -n "$filter" ] && cmd+=("--gtest_filter=$filter")
if [ "$sanitize" = 1 ]; then
  sanitizer=$(command -v compute-sanitizer || true)
  [ -z "$sanitizer" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && sanitizer=/usr/local/cuda/bin/compute-sanitizer
  if [ -z "$sanitizer" ]; then
    echo "run.sh: --sanitize needs compute-sanitizer (CUDA toolkit), not found" >&2
    exit 1
  fi
  # 86: a status of the sanitizer's own, so that its findings are told apart from test failures.
  cmd=("$sanitizer" --tool memcheck --error-exitcode 86 --print-limit 50 "${cmd[@]}")
fi

{
  echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/== GPU: /' || true
  fi
  echo "== ${cmd[*]}"
} | tee "$log"

set +e
(cd "$root" && "${cmd[@]}") 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
set -e

# The table: from gtest's JSON report, or from its console output when python3 is missing.
summarize_json() {
  python3 - "$json" <<'EOF'
import json, sys
with open(sys.argv[1]) as f:
    report = json.load(f)
rows = []
for suite in report.get("testsuites", []):
    for t in suite.get("testsuite", []):
        if t.get("status") == "NOTRUN":
            continue
        if t.get("failures"):
            result = "FAIL"
        elif t.get("result") == "SKIPPED":
            result = "SKIP"
        else:
            result = "PASS"
        rows.append((suite["name"] + "." + t["name"], result, float(t.get("time", "0s").rstrip("s"))))
width = max([len("test")] + [len(r[0]) for r in rows])
print(f"{'test':<{width}}  result  time (s)")
for name, result, seconds in rows:
    print(f"{name:<{width}}  {result:<6}  {seconds:8.3f}")
count = {k: sum(1 for r in rows if r[1] == k) for k in ("PASS", "FAIL", "SKIP")}
total = sum(r[2] for r in rows)
print(f"total: {len(rows)} tests, {count['PASS']} passed, {count['FAIL']} failed, "
      f"{count['SKIP']} skipped, {total:.3f} s")
EOF
}

summarize_log() {
  awk '
    /^\[       OK \] .* \([0-9]+ ms\)$/ { r = "PASS" }
    /^\[  FAILED  \] .* \([0-9]+ ms\)$/ { r = "FAIL" }
    /^\[  SKIPPED \] .* \([0-9]+ ms\)$/ { r = "SKIP" }
    r != "" {
      gsub(/[()]/, "", $(NF - 1)); name = $(NF - 2)
      printf "%-60s  %-6s  %8.3f\n", name, r, $(NF - 1) / 1000
      n[r]++; total += $(NF - 1) / 1000; all++; r = ""
    }
    END { printf "total: %d tests, %d passed, %d failed, %d skipped, %.3f s\n", all, n["PASS"], n["FAIL"], n["SKIP"], total }
  ' "$log"
}

echo
if [ -s "$json" ] && command -v python3 >/dev/null; then
  summarize_json | tee "$summary"
else
  [ -s "$json" ] || echo "(no JSON report: the tests exited with status $status before writing it)"
  summarize_log | tee "$summary"
fi
if [ "$sanitize" = 1 ] && [ "$status" = 86 ]; then
  echo "compute-sanitizer reported memory errors: see $log" | tee -a "$summary"
elif [ "$status" != 0 ]; then
  echo "mpt_device_tests exited with status $status" | tee -a "$summary"
fi
echo "results: $results"
[ "$status" = 0 ]

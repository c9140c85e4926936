#!/usr/bin/env bash
# The profiling timeline from the command line: profiling.timeline_dir gives each profiled
# rank a Chrome trace of the window's steps and a summary line per step; the keys that
# cannot be honoured are refused, naming the key.
# Usage: timeline.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

window=(profiling.profile_step_start=1 profiling.profile_step_end=3)
train_run two 2 "$fixture" train.global_batch_size=8 train.train_iters=4 ddp.overlap_grad_reduce=true \
  ddp.bucket_size=1 "${window[@]}" profiling.timeline_dir="$tmp/tl"
for r in 0 1; do
  file=$tmp/tl/timeline_rank$r.json
  [[ -s $file ]] || fail "no trace from rank $r: $(ls -l "$tmp/tl" 2>&1)"
  if command -v python3 >/dev/null; then
    python3 - "$file" "$r" <<'EOF' || fail "rank $r's trace is not what it should be"
import json, sys
trace = json.load(open(sys.argv[1]))
spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
assert all(e["pid"] == int(sys.argv[2]) for e in trace["traceEvents"]), "pid"
assert {e["args"]["step"] for e in spans} == {2, 3}, "steps"
names = {e["name"] for e in spans}
for want in ("forward", "backward", "optimizer", "grad all-reduce", "wait grad all-reduce"):
    assert want in names, want
EOF
  else
    grep -q '"grad all-reduce"' "$file" || fail "rank $r's trace has no bucket reductions"
  fi
done
grep -c "profiling: iteration [23] rank 0 | compute .* ms | communication .* ms | [0-9]*% of communication" \
  "$tmp/two.out" | grep -qx 2 || fail "expected two summary lines: $(grep profiling "$tmp/two.out")"

# Only the ranks listed are profiled.
train_run one_rank 2 "$fixture" train.global_batch_size=8 train.train_iters=4 "${window[@]}" \
  profiling.profile_ranks=[1] profiling.timeline_dir="$tmp/tl1"
[[ -s $tmp/tl1/timeline_rank1.json && ! -e $tmp/tl1/timeline_rank0.json ]] ||
  fail "profile_ranks=[1]: $(ls "$tmp/tl1" 2>&1)"

# Refused, naming the key.
for bad in profiling.use_pytorch_profiler=true profiling.use_nsys_profiler=true profiling.profile_step_end=1 \
  profiling.profile_ranks=[5] profiling.timeline=x; do
  run 1 config "$fixture" "$bad"
  grep -qF "${bad%%=*}" "$tmp/err" || fail "$bad: the key is not named: $(cat "$tmp/err")"
done
echo "timeline.sh: ok"

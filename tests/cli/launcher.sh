#!/usr/bin/env bash
# mptrain --nproc-per-node N: the ranks' output comes back prefixed with their rank, a failed
# rank is named, and the launch options are checked. Training on several ranks may or may
# not be supported by the build under test, so a launch may end 0 (trained) or 1 (a rank
# refused), but nothing else.
# Usage: launcher.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

# run EXPECTED_EXIT ARGS...: runs mptrain, keeps stdout/stderr in $tmp/out and $tmp/err.
run() {
  local want=$1; shift
  timeout 120 "$mptrain" "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  [[ $got == "$want" ]] || fail "mptrain $* exited $got, expected $want; stderr: $(cat "$tmp/err")"
}

# Two ranks training a few iterations.
timeout 120 "$mptrain" --nproc-per-node 2 --threads 1 "$fixture" train.train_iters=2 logger.log_interval=1 \
  >"$tmp/out" 2>"$tmp/err"
code=$?
both="$(cat "$tmp/out" "$tmp/err")"
[[ $code == 0 || $code == 1 ]] || fail "a 2-rank launch exited $code, expected 0 or 1: $both"
# Every line a rank printed carries its rank; the launcher's own lines start with "mptrain: ".
bad=$(grep -vE '^\[rank[01]\]: ' "$tmp/out" | head -3)
[[ -z $bad ]] || fail "stdout lines without a rank prefix: $bad"
bad=$(grep -vE '^(\[rank[01]\]: |mptrain: )' "$tmp/err" | head -3)
[[ -z $bad ]] || fail "stderr lines that are neither a rank's nor the launcher's: $bad"
grep -qE '^\[rank[01]\]: ' "$tmp/out" "$tmp/err" || fail "no prefixed line from any rank: $both"
if [[ $code == 1 ]]; then
  # The rank that failed is named, and its own error message came through complete.
  failed=$(sed -nE 's/^mptrain: rank ([01]) exited with status 1$/\1/p' "$tmp/err" | head -1)
  [[ -n $failed ]] || fail "exit 1 without a line naming the rank that exited with status 1: $both"
  grep -qE "^\[rank$failed\]: mptrain: error: .+" "$tmp/err" ||
    fail "rank $failed failed but its error message is missing: $both"
else
  grep -qE '^\[rank[01]\]: .*finished at iteration 2' "$tmp/out" || fail "trained, but no closing line: $both"
fi

# --master-addr and --master-port are accepted with --nproc-per-node and not passed on to
# the ranks (which would refuse them without --nproc-per-node, with status 2).
timeout 120 "$mptrain" --nproc-per-node=2 --master-addr 127.0.0.1 --master-port=29613 config "$fixture" \
  >"$tmp/out" 2>"$tmp/err"
code=$?
[[ $code == 0 || $code == 1 ]] || fail "config on 2 ranks exited $code: $(cat "$tmp/err")"
grep -q "exited with status 2" "$tmp/err" && fail "a rank got a launch option: $(cat "$tmp/err")"
if [[ $code == 0 ]]; then
  # Both ranks resolved the same recipe: each one's lines, unprefixed, are the same text.
  sed -n 's/^\[rank0\]: //p' "$tmp/out" >"$tmp/rank0"
  sed -n 's/^\[rank1\]: //p' "$tmp/out" >"$tmp/rank1"
  grep -q '^\[model\]' "$tmp/rank0" || fail "rank 0 printed no recipe: $(head -5 "$tmp/out")"
  cmp -s "$tmp/rank0" "$tmp/rank1" || fail "the ranks' recipes differ: $(diff "$tmp/rank0" "$tmp/rank1" | head -5)"
fi

# Usage errors: exit 2, nothing launched.
run 2 --nproc-per-node 0 "$fixture"
grep -q -- "--nproc-per-node expects an integer" "$tmp/err" || fail "nproc 0 message: $(cat "$tmp/err")"
run 2 --nproc-per-node -1 "$fixture"
run 2 --nproc-per-node=two "$fixture"
run 2 --nproc-per-node 2 --master-port 0 "$fixture"
grep -q -- "--master-port expects an integer in 1..65535" "$tmp/err" || fail "port 0 message: $(cat "$tmp/err")"
run 2 --nproc-per-node 2 --master-port 65536 "$fixture"
run 2 --nproc-per-node 2 --master-addr= "$fixture"
run 2 --master-port 29500 "$fixture"
grep -q -- "--master-port sets the rendezvous of ranks started by --nproc-per-node" "$tmp/err" ||
  fail "--master-port without --nproc-per-node: $(cat "$tmp/err")"
run 2 --nproc-per-node 2 preprocess --input x --output-prefix y
grep -q -- "--nproc-per-node starts ranks for 'train' and 'config'" "$tmp/err" || fail "preprocess: $(cat "$tmp/err")"
# Already one rank of a job started by another launcher: a nested launch is refused.
WORLD_SIZE=2 RANK=0 run 2 --nproc-per-node 2 "$fixture"
grep -qF "inside a launched job (WORLD_SIZE=2)" "$tmp/err" || fail "nested launch: $(cat "$tmp/err")"
SLURM_NTASKS=4 run 2 --nproc-per-node 2 "$fixture"
grep -qF "(SLURM_NTASKS=4)" "$tmp/err" || fail "nested launch under srun: $(cat "$tmp/err")"

run 0 --help
for word in --nproc-per-node --master-addr --master-port '[rankK]: '; do
  grep -qF -- "$word" "$tmp/out" || fail "--help does not mention '$word'"
done
echo "launcher.sh: ok"

#!/usr/bin/env bash
# Tensor parallelism from the command line: `--nproc-per-node 2` at TP=2 with sequence
# parallelism, and 4 processes at TP=2 x DP=2, give the one-rank loss curve; a TP=2 run
# saved half-way and resumed, at TP=2 or on one rank, ends where the uninterrupted run ends.
# Usage: tensor_parallel.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

losses() { grep -oE '"lm_loss":[^,}]+' "$1" | cut -d: -f2; }
# same_losses A B WHAT: every step's loss within 1e-5 relative.
same_losses() {
  paste <(losses "$1") <(losses "$2") >"$tmp/pairs"
  [[ $(wc -l <"$tmp/pairs") == "$(losses "$1" | wc -l)" && -s "$tmp/pairs" ]] || fail "$3: step counts differ"
  awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }' \
    "$tmp/pairs" || fail "$3: losses differ from one rank's: $(cat "$tmp/pairs")"
}
train() {  # train NAME NPROC OVERRIDES...
  local name=$1 n=$2
  shift 2
  "$mptrain" --nproc-per-node "$n" --threads 1 "$fixture" train.global_batch_size=8 train.train_iters=6 \
    logger.metrics_file="$tmp/$name.jsonl" "$@" >"$tmp/$name.out" 2>&1 || fail "$name exited $?: $(tail -5 "$tmp/$name.out")"
}

train one 1
train tp2sp 2 model.tensor_model_parallel_size=2 model.sequence_parallel=true
grep -q "TP 2" "$tmp/tp2sp.out" || fail "the layout is not reported: $(head -5 "$tmp/tp2sp.out")"
same_losses "$tmp/one.jsonl" "$tmp/tp2sp.jsonl" "TP=2+SP"
train tp2dp2 4 model.tensor_model_parallel_size=2
same_losses "$tmp/one.jsonl" "$tmp/tp2dp2.jsonl" "TP=2 x DP=2"

# Save at iteration 3, resume to 6: the same losses as the uninterrupted run.
train first 2 model.tensor_model_parallel_size=2 train.exit_interval=3 checkpoint.save="$tmp/ckpt"
[[ -f $tmp/ckpt/latest_checkpointed_iteration.txt ]] || fail "no checkpoint written: $(tail -3 "$tmp/first.out")"
train resumed 2 model.tensor_model_parallel_size=2 checkpoint.load="$tmp/ckpt"
grep -q "loaded checkpoint" "$tmp/resumed.out" || fail "the checkpoint was not loaded: $(head -8 "$tmp/resumed.out")"
# same_tail RUN WHAT: RUN's 3 steps equal the one-rank run's last 3.
same_tail() {
  losses "$tmp/one.jsonl" | tail -3 >"$tmp/want"
  losses "$tmp/$1.jsonl" >"$tmp/got"
  [[ $(wc -l <"$tmp/got") == 3 ]] || fail "$2 trained $(wc -l <"$tmp/got") steps, expected 3"
  paste "$tmp/want" "$tmp/got" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1 } END { exit bad }' ||
    fail "$2 differs: $(paste "$tmp/want" "$tmp/got")"
}
same_tail resumed "the resumed TP=2 run"

# The TP=2 checkpoint (vocabulary padded to 512 rows) resumed on one rank (384 rows): the
# same losses again.
train resumed_one 1 checkpoint.load="$tmp/ckpt"
same_tail resumed_one "the TP=2 checkpoint resumed on one rank"
echo "tensor_parallel.sh: ok"

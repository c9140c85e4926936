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

# train NAME NPROC OVERRIDES...: 6 steps of 2 micro-batches.
train() { train_fixture "$@"; }

train one 1
train tp2sp 2 model.tensor_model_parallel_size=2 model.sequence_parallel=true
grep -q "TP 2" "$tmp/tp2sp.out" || fail "the layout is not reported: $(head -5 "$tmp/tp2sp.out")"
same_run one tp2sp "TP=2+SP"
train tp2dp2 4 model.tensor_model_parallel_size=2
same_run one tp2dp2 "TP=2 x DP=2"

# Save at iteration 3, resume to 6: the same losses as the uninterrupted run.
train first 2 model.tensor_model_parallel_size=2 train.exit_interval=3 checkpoint.save="$tmp/ckpt"
[[ -f $tmp/ckpt/latest_checkpointed_iteration.txt ]] || fail "no checkpoint written: $(tail -3 "$tmp/first.out")"
train resumed 2 model.tensor_model_parallel_size=2 checkpoint.load="$tmp/ckpt"
grep -q "loaded checkpoint" "$tmp/resumed.out" || fail "the checkpoint was not loaded: $(head -8 "$tmp/resumed.out")"
same_run one resumed "the resumed TP=2 run" 3

# The TP=2 checkpoint (vocabulary padded to 512 rows) resumed on one rank (384 rows): the
# same losses again.
train resumed_one 1 checkpoint.load="$tmp/ckpt"
same_run one resumed_one "the TP=2 checkpoint resumed on one rank" 3
echo "tensor_parallel.sh: ok"

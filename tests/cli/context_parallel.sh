#!/usr/bin/env bash
# Context parallelism from the command line: `--nproc-per-node 2` at CP=2 (ring and
# all-gather exchanges) and 4 processes at CP=2 x TP=2 give the one-rank loss curve; a CP=2
# checkpoint resumes on one rank; a sequence that does not split, or an exchange that does
# not exist, is refused before training with the key named.
# Usage: context_parallel.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

# train NAME NPROC OVERRIDES...: 6 steps of 2 micro-batches.
train() { train_fixture "$@"; }

train one 1
train cp2 2 model.context_parallel_size=2
grep -q "CP 2" "$tmp/cp2.out" || fail "the layout is not reported: $(head -5 "$tmp/cp2.out")"
grep -q "context parallel (p2p)" "$tmp/cp2.out" || fail "the exchange is not reported: $(head -5 "$tmp/cp2.out")"
same_run one cp2 "CP=2 ring"
train cp2ag 2 model.context_parallel_size=2 model.cp_comm_type=all_gather
same_run one cp2ag "CP=2 all-gather"
train cp2tp2 4 model.context_parallel_size=2 model.tensor_model_parallel_size=2 model.sequence_parallel=true
same_run one cp2tp2 "CP=2 x TP=2+SP"

# Save a CP=2 run at iteration 3 and resume it on one rank: the same losses as the
# uninterrupted run (checkpoints hold whole tensors, whatever the layout).
train first 2 model.context_parallel_size=2 train.exit_interval=3 checkpoint.save="$tmp/ckpt"
train resumed 1 checkpoint.load="$tmp/ckpt"
grep -q "loaded checkpoint" "$tmp/resumed.out" || fail "the checkpoint was not loaded: $(head -8 "$tmp/resumed.out")"
same_run one resumed "the CP=2 checkpoint resumed on one rank" 3

# Refused before training: seq_length 36 does not split into 2 x 4 chunks; "a2a" is not an
# exchange mptrain has.
"$mptrain" --nproc-per-node 4 --threads 1 "$fixture" model.context_parallel_size=4 model.seq_length=36 \
  >"$tmp/bad.out" 2>&1 && fail "seq_length 36 at CP=4 was accepted"
grep -q "model.seq_length" "$tmp/bad.out" && grep -q "2 \* context_parallel_size = 8" "$tmp/bad.out" ||
  fail "the seq_length error does not name the rule: $(tail -5 "$tmp/bad.out")"
run 1 "$fixture" model.cp_comm_type=a2a
grep -q "model.cp_comm_type" "$tmp/err" && grep -q "all_gather" "$tmp/err" ||
  fail "the cp_comm_type error does not name the choices: $(cat "$tmp/err")"
echo "context_parallel.sh: ok"

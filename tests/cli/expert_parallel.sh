#!/usr/bin/env bash
# Expert parallelism from the command line on recipes/tiny_moe.toml: `--nproc-per-node 2` at
# EP=2 with the alltoall and the allgather token dispatchers, and 4 processes at EP=2 x
# ETP=2, give the one-rank loss curve; an EP=2 checkpoint resumes on one rank; layouts that
# cannot work are refused before training with the key named.
# Usage: expert_parallel.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
recipe=$src/recipes/tiny_moe.toml
source "$src/tests/cli/lib/common.bash"

# train NAME NPROC OVERRIDES...: 6 steps of 8 sequences in micro-batches of 2 (4 of them on
# one rank, 2 per rank on two, 1 on four); the recipe's first evaluation (iteration 50) is
# not reached.
train() {
  local name=$1 n=$2
  shift 2
  train_run "$name" "$n" "$recipe" train.micro_batch_size=2 train.global_batch_size=8 train.train_iters=6 "$@"
}

train one 1
losses=$(metric "$tmp/one.jsonl" | wc -l)
[[ $losses == 6 ]] || fail "the one-rank run logged $losses losses, expected 6"
train ep2a2a 2 model.expert_model_parallel_size=2 model.moe_token_dispatcher_type=alltoall
grep -q "EP 2" "$tmp/ep2a2a.out" || fail "the expert layout is not reported: $(head -5 "$tmp/ep2a2a.out")"
same_run one ep2a2a "EP=2 alltoall"
train ep2ag 2 model.expert_model_parallel_size=2 model.moe_token_dispatcher_type=allgather
same_run one ep2ag "EP=2 allgather"
train ep2etp2 4 model.expert_model_parallel_size=2 model.expert_tensor_parallel_size=2
grep -q "ETP 2 x EP 2" "$tmp/ep2etp2.out" || fail "the expert layout is not reported: $(head -5 "$tmp/ep2etp2.out")"
same_run one ep2etp2 "EP=2 x ETP=2 alltoall"

# Save an EP=2 run at iteration 3 (each rank holds half of the experts) and resume it on one
# rank: the same losses as the uninterrupted run (checkpoints hold every expert).
train first 2 model.expert_model_parallel_size=2 train.exit_interval=3 checkpoint.save="$tmp/ckpt"
[[ -f $tmp/ckpt/latest_checkpointed_iteration.txt ]] || fail "no checkpoint written: $(tail -3 "$tmp/first.out")"
train resumed 1 checkpoint.load="$tmp/ckpt"
grep -q "loaded checkpoint" "$tmp/resumed.out" || fail "the checkpoint was not loaded: $(head -8 "$tmp/resumed.out")"
same_run one resumed "the EP=2 checkpoint resumed on one rank" 3

# Refused before training: 8 experts do not split over 3 expert-parallel ranks; experts with
# tensor parallelism need sequence parallelism; "flex" is not a dispatcher mptrain has.
"$mptrain" --nproc-per-node 3 --threads 1 "$recipe" model.expert_model_parallel_size=3 train.global_batch_size=12 \
  >"$tmp/bad.out" 2>&1 && fail "8 experts at EP=3 were accepted"
grep -q "model.num_moe_experts" "$tmp/bad.out" && grep -q "8 % 3 = 2" "$tmp/bad.out" ||
  fail "the num_moe_experts error does not name the rule: $(tail -5 "$tmp/bad.out")"
grep -q "lm loss" "$tmp/bad.out" && fail "EP=3 trained before it was refused: $(head -5 "$tmp/bad.out")"
"$mptrain" --nproc-per-node 2 --threads 1 "$recipe" model.tensor_model_parallel_size=2 >"$tmp/bad.out" 2>&1 &&
  fail "experts at TP=2 without sequence parallelism were accepted"
grep -q "model.sequence_parallel: must be true for a mixture of experts" "$tmp/bad.out" ||
  fail "the sequence_parallel error does not name the rule: $(tail -5 "$tmp/bad.out")"
run 1 "$recipe" model.moe_token_dispatcher_type=flex
grep -q "model.moe_token_dispatcher_type" "$tmp/err" && grep -q "alltoall" "$tmp/err" ||
  fail "the dispatcher error does not name the choices: $(cat "$tmp/err")"
echo "expert_parallel.sh: ok"

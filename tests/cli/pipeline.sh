#!/usr/bin/env bash
# Pipeline parallelism from the command line: processes at PP=2 with two virtual stages and
# at PP=2 x TP=2 give the one-rank losses, validation included; a PP=2 run saved half-way
# resumes on one rank where the uninterrupted run goes; an interleaved layout whose
# micro-batches do not divide is refused at load, naming the rule.
# Usage: pipeline.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

# same WANT RUN WHAT [TAIL]: RUN's losses (training and validation) equal run WANT's (its
# last TAIL when given).
same() {
  if [[ -n ${4:-} ]]; then metric "$tmp/$1.jsonl" | tail -"$4" >"$tmp/want"; else metric "$tmp/$1.jsonl" >"$tmp/want"; fi
  metric "$tmp/$2.jsonl" >"$tmp/got"
  same_values "$tmp/want" "$tmp/got" "$3"
}
train() {  # train NAME NPROC OVERRIDES...
  local name=$1 n=$2
  shift 2
  "$mptrain" --nproc-per-node "$n" --threads 1 "$fixture" train.global_batch_size=8 train.train_iters=6 \
    validation.eval_interval=3 validation.eval_iters=1 logger.metrics_file="$tmp/$name.jsonl" "$@" \
    >"$tmp/$name.out" 2>&1 || fail "$name exited $?: $(tail -5 "$tmp/$name.out")"
}

train one 1
train vpp 2 model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2 model.num_layers=4
train one4 1 model.num_layers=4
same one4 vpp "PP=2 VPP=2"
train pptp 4 model.pipeline_model_parallel_size=2 model.tensor_model_parallel_size=2
same one pptp "PP=2 x TP=2"

# Save at iteration 3, then resume on one rank.
train first 2 model.pipeline_model_parallel_size=2 train.exit_interval=3 checkpoint.save="$tmp/ckpt"
[[ -f $tmp/ckpt/latest_checkpointed_iteration.txt ]] || fail "no checkpoint written: $(tail -3 "$tmp/first.out")"
train resumed 1 checkpoint.load="$tmp/ckpt"
same one resumed "the PP=2 checkpoint resumed on one rank" 4  # steps 4-6, validation at 6

# 4 micro-batches cannot be interleaved over 3 stages.
"$mptrain" --nproc-per-node 3 "$fixture" model.num_layers=6 model.pipeline_model_parallel_size=3 \
  model.virtual_pipeline_model_parallel_size=2 train.global_batch_size=8 >"$tmp/bad.out" 2>&1
code=$?
[[ $code == 1 ]] || fail "an impossible interleaved layout exited $code, expected 1: $(tail -3 "$tmp/bad.out")"
grep -q "divisible by model.pipeline_model_parallel_size (3)" "$tmp/bad.out" ||
  fail "the rule is not named: $(cat "$tmp/bad.out")"
echo "pipeline.sh: ok"

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

# train NAME NPROC OVERRIDES...: 6 steps of 2 micro-batches, validating at 3 and 6.
train() { train_fixture "$@" validation.eval_interval=3 validation.eval_iters=1; }

train one 1
train vpp 2 model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2 model.num_layers=4
train one4 1 model.num_layers=4
same_run one4 vpp "PP=2 VPP=2"
train pptp 4 model.pipeline_model_parallel_size=2 model.tensor_model_parallel_size=2
same_run one pptp "PP=2 x TP=2"

# Save at iteration 3, then resume on one rank.
train first 2 model.pipeline_model_parallel_size=2 train.exit_interval=3 checkpoint.save="$tmp/ckpt"
[[ -f $tmp/ckpt/latest_checkpointed_iteration.txt ]] || fail "no checkpoint written: $(tail -3 "$tmp/first.out")"
train resumed 1 checkpoint.load="$tmp/ckpt"
same_run one resumed "the PP=2 checkpoint resumed on one rank" 4  # steps 4-6, validation at 6

# 4 micro-batches cannot be interleaved over 3 stages.
"$mptrain" --nproc-per-node 3 "$fixture" model.num_layers=6 model.pipeline_model_parallel_size=3 \
  model.virtual_pipeline_model_parallel_size=2 train.global_batch_size=8 >"$tmp/bad.out" 2>&1
code=$?
[[ $code == 1 ]] || fail "an impossible interleaved layout exited $code, expected 1: $(tail -3 "$tmp/bad.out")"
grep -q "divisible by model.pipeline_model_parallel_size (3)" "$tmp/bad.out" ||
  fail "the rule is not named: $(cat "$tmp/bad.out")"
echo "pipeline.sh: ok"

#!/usr/bin/env bash
# bf16 mixed precision from the command line: `mixed_precision = "bf16_mixed"` (Bridge's
# preset) trains recipes/tiny.toml along the fp32 loss curve and says so in its first log
# line; its checkpoint holds the fp32 master weights, so an fp32 run resumes from it; a bf16
# run with bf16 gradient reduction or fp16 is refused naming the key.
# Usage: bf16.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
recipe=$src/recipes/tiny.toml
source "$src/tests/cli/lib/common.bash"

train() {
  local name=$1 n=$2
  shift 2
  train_run "$name" "$n" "$recipe" train.train_iters=6 validation.eval_interval=null "$@"
}

train fp32 1
train bf16 1 mixed_precision=bf16_mixed
head -1 "$tmp/bf16.out" | grep -q "bf16 mixed precision" || fail "the first log line does not say bf16: $(head -2 "$tmp/bf16.out")"
head -1 "$tmp/fp32.out" | grep -q ", fp32" || fail "the first log line does not say fp32: $(head -2 "$tmp/fp32.out")"
metric "$tmp/fp32.jsonl" >"$tmp/want"
metric "$tmp/bf16.jsonl" >"$tmp/got"
[[ $(wc -l <"$tmp/got") == 6 ]] || fail "the bf16 run logged $(wc -l <"$tmp/got") losses, expected 6"
# Within 1% of fp32 at every step, and not the same numbers (bf16 is in use).
paste "$tmp/want" "$tmp/got" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-2 * $1) bad = 1; if (d > 1e-7 * $1) moved = 1 }
  END { exit (bad || !moved) }' || fail "bf16 losses do not track fp32 within 1%: $(paste "$tmp/want" "$tmp/got")"
# model.bf16 = true and [mixed_precision] bf16 = true are the same run.
train model_bf16 1 model.bf16=true
same_run bf16 model_bf16 "model.bf16=true against the bf16_mixed preset"

# The checkpoint holds fp32 master weights: fp32 resumes from a bf16 checkpoint.
train first 2 mixed_precision=bf16_mixed train.exit_interval=3 checkpoint.save="$tmp/ckpt"
"$mptrain" ckpt-info "$tmp/ckpt" --tensors >"$tmp/info" 2>&1 || fail "ckpt-info failed: $(cat "$tmp/info")"
grep -q "BF16" "$tmp/info" && fail "the checkpoint holds bf16 tensors: $(grep BF16 "$tmp/info" | head -3)"
grep -q "F32" "$tmp/info" || fail "ckpt-info lists no F32 tensors: $(head -20 "$tmp/info")"
train resumed 1 checkpoint.load="$tmp/ckpt"
grep -q "loaded checkpoint" "$tmp/resumed.out" || fail "the checkpoint was not loaded: $(head -8 "$tmp/resumed.out")"

run 1 "$recipe" mixed_precision.bf16=true mixed_precision.grad_reduce_in_fp32=false
grep -q "mixed_precision.grad_reduce_in_fp32" "$tmp/err" || fail "bf16 gradient reduction not refused: $(cat "$tmp/err")"
run 1 "$recipe" mixed_precision=fp16_mixed
grep -q "fp16_mixed" "$tmp/err" || fail "fp16 not refused by name: $(cat "$tmp/err")"
echo "bf16.sh: ok"

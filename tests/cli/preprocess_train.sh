#!/usr/bin/env bash
# From raw text to training without Python: `mptrain preprocess` writes a Megatron indexed
# dataset, training reads it (GPT sampling, validation split, index cache), and a run
# resumed from a checkpoint sees exactly the batches of an uninterrupted run: its losses
# (training and validation) are bit-identical to the uninterrupted run's.
# Usage: preprocess_train.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

# Raw text: the project's own documentation, one document per paragraph.
cat "$src/README.md" "$src"/recipes/*.toml >"$tmp/text.txt"
"$mptrain" preprocess --input "$tmp/text.txt" --output-prefix "$tmp/docs" --docs paragraph --append-eod \
  >"$tmp/out" 2>&1 || fail "preprocess exited $?: $(cat "$tmp/out")"
[[ -s $tmp/docs.bin && -s $tmp/docs.idx ]] || fail "preprocess wrote no dataset: $(ls "$tmp")"

common=(--threads 2 "$fixture" dataset.source=indexed "dataset.data_path=[\"$tmp/docs\"]" dataset.split=80,20,0
  train.train_iters=6 validation.eval_interval=2 validation.eval_iters=1 logger.log_interval=1)

# Uninterrupted, loading batches in the training loop.
"$mptrain" "${common[@]}" dataset.num_workers=0 logger.metrics_file="$tmp/a.jsonl" >"$tmp/out" 2>&1 ||
  fail "uninterrupted run exited $?: $(cat "$tmp/out")"
grep -q "validation loss at iteration 6" "$tmp/out" || fail "no validation at iteration 6: $(cat "$tmp/out")"
ls "$tmp"/cache/GPTDataset_indices/*-GPTDataset-train-shuffle_index.npy >/dev/null 2>&1 ||
  fail "no index cache beside the data: $(ls -R "$tmp")"

# Interrupted after 3 iterations, then resumed from the checkpoint, prefetching batches.
"$mptrain" "${common[@]}" train.exit_interval=3 checkpoint.save="$tmp/ckpt" logger.metrics_file="$tmp/b.jsonl" \
  >"$tmp/out" 2>&1 || fail "first half exited $?: $(cat "$tmp/out")"
"$mptrain" "${common[@]}" checkpoint.load="$tmp/ckpt" checkpoint.save="$tmp/ckpt" logger.metrics_file="$tmp/b.jsonl" \
  >"$tmp/out" 2>&1 || fail "resumed run exited $?: $(cat "$tmp/out")"
grep -q "loaded checkpoint" "$tmp/out" || fail "the second half did not resume: $(cat "$tmp/out")"

losses() { grep -oE '"(event":"validation"|iteration":[0-9]+|lm_loss":[^,}]+)' "$1" | tr '\n' ' '; }
a=$(losses "$tmp/a.jsonl")
b=$(losses "$tmp/b.jsonl")
[[ -n $a ]] || fail "no losses in the metrics file: $(cat "$tmp/a.jsonl")"
[[ $a == "$b" ]] || fail "the resumed run differs from the uninterrupted one:"$'\n'"uninterrupted: $a"$'\n'"resumed:       $b"
[[ $(grep -c '"lm_loss"' "$tmp/a.jsonl") == 9 ]] || fail "expected 6 steps and 3 validations: $(cat "$tmp/a.jsonl")"

# Tokens outside the model's vocabulary are rejected with a clear error, not a crash.
"$mptrain" "${common[@]}" model.vocab_size=200 >"$tmp/out" 2>&1
code=$?
[[ $code == 1 ]] || fail "out-of-vocabulary tokens exited $code, expected 1: $(cat "$tmp/out")"
grep -q "outside the model's vocabulary" "$tmp/out" || fail "no vocabulary error: $(cat "$tmp/out")"

# A missing dataset is named.
"$mptrain" "${common[@]}" "dataset.data_path=[\"$tmp/nothing\"]" >"$tmp/out" 2>&1
[[ $? == 1 ]] || fail "a missing dataset did not exit 1: $(cat "$tmp/out")"
grep -q "$tmp/nothing" "$tmp/out" || fail "the missing dataset is not named: $(cat "$tmp/out")"
echo "preprocess_train.sh: ok"

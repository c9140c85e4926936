#!/usr/bin/env bash
# `mptrain batches` and `mptrain train --save-initial`, what the loss check against PyTorch
# (tests/device/verify.sh) stands on: the token ids of each iteration as a .npy array (its
# header and shape, byte tokens of the corpus, --start continuing the same stream, an
# indexed dataset's windows), and the initial weights
# saved before the first step (a run loading them repeats the first run's losses); usage
# errors exit 2, --save-initial without checkpoint.save exits 1 naming the key.
# Usage: batches.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

# The header: NumPy format 1.0, int32, [iterations, global batch 4, seq_length 32 + 1].
run 0 batches "$fixture" --iterations 3 --output "$tmp/all.npy"
grep -q "wrote iterations 1..3 (4 samples of 33 tokens each)" "$tmp/out" || fail "no summary line: $(cat "$tmp/out")"
header=$(head -c 128 "$tmp/all.npy" | tr -d '\0')
[[ $header == *"NUMPY"*"'descr': '<i4', 'fortran_order': False, 'shape': (3, 4, 33, ), }"* ]] ||
  fail "unexpected .npy header: $header"
len=$(( $(od -An -tu2 -j8 -N2 "$tmp/all.npy") + 10 ))
(( len % 64 == 0 )) || fail "the header is $len bytes, not a multiple of 64"
(( $(stat -c %s "$tmp/all.npy") == len + 3 * 4 * 33 * 4 )) || fail "the file size is not header + 3*4*33 int32"
# Byte tokens: every id below 257, and not all the same.
od -An -v -td4 -j"$len" "$tmp/all.npy" | tr -s ' ' '\n' | sed '/^$/d' >"$tmp/ids"
awk '$1 < 0 || $1 > 256 { bad = 1 } END { exit bad }' "$tmp/ids" || fail "a token id outside 0..256"
(( $(sort -u "$tmp/ids" | wc -l) > 10 )) || fail "the ids look constant"

# --start 1: iterations 2..3, the same bytes as the end of the first file.
run 0 batches "$fixture" --start 1 --iterations 2 --output "$tmp/tail.npy"
cmp -s <(tail -c $((2 * 4 * 33 * 4)) "$tmp/all.npy") <(tail -c $((2 * 4 * 33 * 4)) "$tmp/tail.npy") ||
  fail "--start 1 does not continue the stream where iteration 1 ends"
# The global batch comes from the recipe: 8 samples at global_batch_size = 8.
run 0 batches "$fixture" train.global_batch_size=8 --iterations 1 --output "$tmp/g8.npy"
head -c 128 "$tmp/g8.npy" | grep -q "'shape': (1, 8, 33, )" || fail "global_batch_size=8 not honoured"

# An indexed dataset (one document of the letters A..Z repeated): every sample written is a
# window of consecutive text.
seq 0 399 | awk '{ printf "%c", 65 + $1 % 26 }' >"$tmp/doc.txt"
run 0 preprocess --input "$tmp/doc.txt" --output-prefix "$tmp/letters"
run 0 batches "$fixture" dataset.source=indexed dataset.data_path="[\"$tmp/letters\"]" dataset.split=100,0,0 \
  --iterations 3 --output "$tmp/indexed.npy"
od -An -v -td4 -j"$len" "$tmp/indexed.npy" | tr -s ' ' '\n' | sed '/^$/d' >"$tmp/letters.ids"
awk 'NR > 1 && $1 != 65 + (prev - 65 + 1) % 26 && (NR - 1) % 33 != 0 { bad = 1 } { prev = $1 } END { exit bad }' \
  "$tmp/letters.ids" || fail "an indexed sample is not consecutive text"

# Usage errors: each option belongs to its command.
run 2 batches "$fixture" --iterations 3
grep -q -- "--output" "$tmp/err" || fail "batches without --output: $(cat "$tmp/err")"
run 2 batches "$fixture" --output "$tmp/x.npy"
grep -q -- "--iterations" "$tmp/err" || fail "batches without --iterations: $(cat "$tmp/err")"
run 2 batches "$fixture" --iterations 0 --output "$tmp/x.npy"
run 2 batches "$fixture" --iterations 1 --start -1 --output "$tmp/x.npy"
run 2 "$fixture" --iterations 3
grep -q "is an option of 'batches', not of 'train'" "$tmp/err" || fail "--iterations to train: $(cat "$tmp/err")"
run 2 batches --save-initial "$fixture" --iterations 1 --output "$tmp/x.npy"
grep -q "is an option of 'train', not of 'batches'" "$tmp/err" || fail "--save-initial to batches: $(cat "$tmp/err")"
run 2 config --save-initial "$fixture"
run 1 batches "$fixture" --iterations 1 --output "$tmp/no/such/dir/x.npy"
grep -q "$tmp/no/such/dir/x.npy" "$tmp/err" || fail "an unwritable --output is not named: $(cat "$tmp/err")"

# --save-initial: iteration 0 saved before the first step, then the run's own checkpoint.
run 1 train --save-initial "$fixture"
grep -q "checkpoint.save" "$tmp/err" || fail "--save-initial without checkpoint.save: $(cat "$tmp/err")"
train_run first 1 train --save-initial "$fixture" checkpoint.save="$tmp/ckpt"
[[ -f $tmp/ckpt/iter_0000000/index.json && -f $tmp/ckpt/iter_0000003/index.json ]] ||
  fail "expected iter_0000000 and iter_0000003: $(ls "$tmp/ckpt")"
run 0 ckpt-info "$tmp/ckpt/iter_0000000"
grep -q '^iteration: 0$' "$tmp/out" || fail "the initial checkpoint is not at iteration 0: $(cat "$tmp/out")"
# Trained again from the saved initial weights: the same losses, so they are the weights the
# first run started from.
train_run again 1 "$fixture" checkpoint.load="$tmp/ckpt/iter_0000000"
same_run first again "losses from the saved initial weights"
echo "batches.sh: ok"

#!/usr/bin/env bash
# `mptrain ckpt-info`: a checkpoint saved at TP=2 (and one at TP=2 x DP=2 with the
# distributed optimizer) reports its position, layout, files and tensors; a flipped byte, a
# truncated shard and a missing shard are each an error naming the file (exit 1); a missing
# directory is a clear error; a bad command line exits 2.
# Usage: ckpt_info.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

# expect_line PATTERN WHAT: the last output has a line matching the extended regex PATTERN.
expect_line() { grep -qE -- "$1" "$tmp/out" || fail "$2: no line matching '$1' in: $(cat "$tmp/out")"; }
# expect_error FILE WORD WHAT: exit 1 with an error naming FILE and mentioning WORD.
expect_error() {
  grep -q "mptrain: error: .*$1" "$tmp/err" || fail "$3: the error does not name $1: $(cat "$tmp/err")"
  grep -q -- "$2" "$tmp/err" || fail "$3: the error does not say '$2': $(cat "$tmp/err")"
}

# 3 steps of 4 samples (2 micro-batches of 2) at TP=2: every rank writes its own shard.
train_run tp2 2 "$fixture" model.tensor_model_parallel_size=2 checkpoint.save="$tmp/ckpt"
[[ -f $tmp/ckpt/iter_0000003/index.json ]] || fail "no checkpoint written: $(tail -3 "$tmp/tp2.out")"

run 0 ckpt-info "$tmp/ckpt"
expect_line "^checkpoint: $tmp/ckpt/iter_0000003\$" "the directory the latest file names"
expect_line '^iteration: 3$' "iteration"
expect_line '^consumed samples: 12$' "consumed samples (3 x 4)"
expect_line '^optimizer steps: 3$' "optimizer steps"
expect_line '^optimizer state: yes$' "optimizer state"
expect_line '^layout: TP 2, CP 1, PP 1, VPP none, DP 1 \(sharding no_shard\), EP 1, ETP 2, world size 2$' "layout"
expect_line '^model: 2 layers, hidden 64, 4 heads, vocab 257$' "model"
# Per file: the size on disk, and the total is their sum.
total=0
for f in shard_00000.safetensors shard_00001.safetensors; do
  size=$(stat -c %s "$tmp/ckpt/iter_0000003/$f")
  total=$((total + size))
  expect_line "^  $f  $size bytes  crc32c [0-9a-f]{8}\$" "file $f"
done
expect_line "^bytes: $total \([0-9.]+ MiB\) in 2 files\$" "total bytes"
tensors=$(sed -nE 's/^tensors: ([0-9]+) \(([0-9]+) model, ([0-9]+) optimizer state\).*/\1 \2 \3/p' "$tmp/out")
read -r n_all n_model n_optim <<<"$tensors"
[[ -n ${n_all:-} && $n_all == $((3 * n_model)) && $n_optim == $((2 * n_model)) ]] ||
  fail "tensor counts '$tensors': expected N model tensors and 2N Adam moments"
grep -q "optimizer.exp_avg" "$tmp/out" && fail "tensor names listed without --tensors"
cp "$tmp/out" "$tmp/summary"

# The iteration directory itself gives the same report.
run 0 ckpt-info "$tmp/ckpt/iter_0000003/"
diff <(grep -v '^checkpoint:' "$tmp/summary") <(grep -v '^checkpoint:' "$tmp/out") >/dev/null ||
  fail "the iteration directory reports otherwise than its save directory: $(cat "$tmp/out")"

# --tensors: one line per tensor, name, dtype, global shape, slices. linear_qkv holds 4
# query heads and 2 key/value groups of 16 channels, (4 + 2 x 2) x 16 = 128 rows, split
# column-parallel over TP=2 into 2 slices; the RMSNorm weight is replicated, saved once.
run 0 ckpt-info --tensors "$tmp/ckpt"
expect_line '^  decoder\.layers\.0\.self_attention\.linear_qkv\.weight +F32 +\[128, 64\] +2 slices$' "qkv"
expect_line '^  decoder\.layers\.1\.mlp\.linear_fc2\.weight +F32 +\[64, 256\] +2 slices$' "fc2 (row-parallel)"
expect_line '^  decoder\.final_layernorm\.weight +F32 +\[64\] +1 slice$' "final norm"
expect_line '^  optimizer\.exp_avg_sq\.decoder\.layers\.0\.self_attention\.linear_qkv\.weight +F32 +\[128, 64\] +2 slices$' \
  "an Adam moment"
listed=$(grep -cE '^  [a-z_.0-9]+ +F32 +\[' "$tmp/out")
[[ $listed == "$n_all" ]] || fail "--tensors listed $listed tensors, the summary counts $n_all"

# TP=2 x DP=2 with the distributed optimizer: the layout names DP 2 and its sharding, and
# one shard per rank.
train_run tp2dp2 4 "$fixture" model.tensor_model_parallel_size=2 ddp.use_distributed_optimizer=true \
  train.train_iters=2 checkpoint.save="$tmp/ckpt4"
run 0 ckpt-info "$tmp/ckpt4"
expect_line '^iteration: 2$' "iteration at 4 ranks"
expect_line '^layout: TP 2, CP 1, PP 1, VPP none, DP 2 \(sharding optim\), EP 1, ETP 2, world size 4$' "layout at 4 ranks"
expect_line '^bytes: [0-9]+ \([0-9.]+ MiB\) in 4 files$' "files at 4 ranks"
expect_line '^  shard_00003\.safetensors  [0-9]+ bytes' "the last rank's shard"

# Damage, each to a fresh copy: a flipped byte in the data, a truncated shard, a missing one.
damaged() { rm -rf "$tmp/bad" && cp -r "$tmp/ckpt" "$tmp/bad"; }
shard=iter_0000003/shard_00001.safetensors
damaged
size=$(stat -c %s "$tmp/bad/$shard")
pos=$((size - 7))
byte=$(od -An -tu1 -j "$pos" -N1 "$tmp/bad/$shard" | tr -d ' ')
printf "\\$(printf %03o $((255 - byte)))" | dd of="$tmp/bad/$shard" bs=1 seek="$pos" conv=notrunc status=none
cmp -s "$tmp/bad/$shard" "$tmp/ckpt/$shard" && fail "the byte was not flipped"
run 1 ckpt-info "$tmp/bad"
expect_error "$shard" "crc32c" "a flipped byte"

damaged
truncate -s $((size / 2)) "$tmp/bad/$shard"
run 1 ckpt-info "$tmp/bad"
expect_error "$shard" "size $((size / 2)) bytes" "a truncated shard"

damaged
rm "$tmp/bad/$shard"
run 1 ckpt-info "$tmp/bad/iter_0000003"
expect_error "$shard" "missing" "a missing shard"

run 1 ckpt-info "$tmp/no-such-dir"
expect_error "$tmp/no-such-dir" "does not exist" "a missing directory"
mkdir "$tmp/empty"
run 1 ckpt-info "$tmp/empty"
expect_error "$tmp/empty" "not a checkpoint" "a directory without a checkpoint"

# Command-line errors.
run 2 ckpt-info
grep -q "ckpt-info needs the checkpoint DIR" "$tmp/err" || fail "no-DIR message: $(cat "$tmp/err")"
run 2 ckpt-info "$tmp/ckpt" "$tmp/ckpt4"
run 2 ckpt-info --scan "$tmp/ckpt"
grep -q -- "--scan is an option of 'dataset-info'" "$tmp/err" || fail "--scan message: $(cat "$tmp/err")"
run 2 config "$fixture" --tensors
grep -q -- "--tensors is an option of 'ckpt-info'" "$tmp/err" || fail "--tensors message: $(cat "$tmp/err")"
run 2 --nproc-per-node 2 ckpt-info "$tmp/ckpt"
echo "ckpt_info.sh: ok"

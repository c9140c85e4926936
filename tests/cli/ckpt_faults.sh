#!/usr/bin/env bash
# Checkpoints under faults, with real mptrain processes on recipes/tiny.toml:
#  1. a save killed part-way (the kernel kills the writer at the write that crosses
#     `ulimit -f`, on one rank and on two TP ranks) leaves the previous checkpoint the
#     latest; it resumes to the uninterrupted run's losses, and that run's save clears the
#     staging leftovers;
#  2. a full disk (the same limit with SIGXFSZ ignored: write() fails with EFBIG) stops the
#     run with an error naming the shard file and the cause; the previous checkpoint stays
#     the latest and loads;
#  3. a flipped byte or a truncated shard in the latest checkpoint is refused at load,
#     naming the shard file.
# No sleeps, no timing: every fault happens at a write the kernel refuses.
# Usage: ckpt_faults.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
recipe=$src/recipes/tiny.toml
source "$src/tests/cli/lib/common.bash"

ck=$tmp/ckpt
limit_kib=1024  # the shards hold megabytes; metrics, logs and index.json stay far below

# train NAME ARGS...: one rank of tiny for 8 iterations in all, metrics in $tmp/NAME.jsonl,
# output in $tmp/NAME.out; returns mptrain's exit status.
train() {
  local name=$1
  shift
  "$mptrain" --threads 1 "$recipe" train.train_iters=8 logger.log_interval=1 "$@" \
    logger.metrics_file="$tmp/$name.jsonl" >"$tmp/$name.out" 2>&1
}
# limited KIND NAME ARGS...: train under `ulimit -f`; KIND `kill` keeps SIGXFSZ's default
# action (the process dies at the write), `full` ignores it (the write fails with EFBIG).
limited() {
  local kind=$1
  shift
  (
    ulimit -c 0
    [[ $kind == full ]] && trap '' XFSZ
    ulimit -f "$limit_kib"
    train "$@"
  ) 2>/dev/null  # bash's own "File size limit exceeded" notice
}
latest() { cat "$ck/latest_checkpointed_iteration.txt" 2>/dev/null; }
staging() { find "$ck" -maxdepth 1 -name '.tmp_*' | sort; }
expect_latest() {
  [[ $(latest) == "$1" ]] || fail "$2: latest names '$(latest)', expected $1; $(ls -a "$ck")"
}

train ref || fail "the uninterrupted run exited $?: $(tail -5 "$tmp/ref.out")"
train first train.exit_interval=2 checkpoint.save="$ck" || fail "first exited $?: $(tail -5 "$tmp/first.out")"
expect_latest 2 "after the first save"

# --- 1. a save killed part-way ------------------------------------------------------------
limited kill killed checkpoint.load="$ck" checkpoint.save="$ck" train.exit_interval=2
code=$?
[[ $code == $((128 + 25)) ]] || fail "the killed save exited $code, expected death by SIGXFSZ: $(tail -5 "$tmp/killed.out")"
grep -q "loaded checkpoint" "$tmp/killed.out" || fail "the killed run did not resume: $(head -5 "$tmp/killed.out")"
expect_latest 2 "after the killed save"
[[ -e $ck/iter_0000004 ]] && fail "the killed save published iter_0000004"
left=$(staging)
[[ $(wc -l <<<"$left") == 1 && -n $left ]] || fail "expected one staging directory left by the killed save: $(ls -a "$ck")"
shard=$left/shard_00000.safetensors
[[ -f $shard ]] || fail "the killed save left no partial shard: $(ls -a "$left")"
[[ $(stat -c %s "$shard") == $((limit_kib * 1024)) ]] || fail "the shard was not cut at the limit: $(stat -c %s "$shard")"

# Two tensor-parallel ranks, each writing its own shard into rank 0's staging directory.
limited kill killed_tp --nproc-per-node 2 model.tensor_model_parallel_size=2 \
  checkpoint.load="$ck" checkpoint.save="$ck" train.exit_interval=2
code=$?
[[ $code != 0 ]] || fail "the killed TP=2 save exited 0"
grep -q "killed by signal" "$tmp/killed_tp.out" || fail "the launcher did not report the killed rank: $(tail -5 "$tmp/killed_tp.out")"
expect_latest 2 "after the killed TP=2 save"
[[ -e $ck/iter_0000004 ]] && fail "the killed TP=2 save published iter_0000004"
# Its start removed the first killed save's staging directory (a dead process's); its own
# is left, holding what the ranks wrote before the kernel stopped them.
left_tp=$(staging)
[[ $(wc -l <<<"$left_tp") == 1 && -n $left_tp && $left_tp != "$left" ]] ||
  fail "expected only the killed TP=2 save's staging directory, not $left: $(ls -a "$ck")"

# The previous checkpoint resumes to the uninterrupted run's losses; its save clears the
# staging directory the dead ranks left.
train resumed checkpoint.load="$ck" checkpoint.save="$ck" train.exit_interval=4 ||
  fail "resuming after the killed saves exited $?: $(tail -5 "$tmp/resumed.out")"
grep -q "loaded checkpoint from $ck at iteration 2" "$tmp/resumed.out" ||
  fail "the resumed run did not start from iteration 2: $(head -5 "$tmp/resumed.out")"
metric "$tmp/ref.jsonl" | sed -n 3,6p >"$tmp/want"
metric "$tmp/resumed.jsonl" >"$tmp/got"
same_values "$tmp/want" "$tmp/got" "the run resumed after the killed saves"
expect_latest 6 "after the resumed save"
[[ -z $(staging) ]] || fail "the next save left the dead saves' staging directories: $(staging)"

# --- 2. a full disk -----------------------------------------------------------------------
limited full full checkpoint.load="$ck" checkpoint.save="$ck"
code=$?
[[ $code == 1 ]] || fail "the save to a full disk exited $code, expected 1: $(tail -5 "$tmp/full.out")"
grep -q "^mptrain: error: .*/shard_00000.safetensors: write failed: File too large" "$tmp/full.out" ||
  fail "the error does not name the shard file and the cause: $(grep error "$tmp/full.out")"
grep -q "^mptrain: error: .*saving the checkpoint.* in '$ck' failed" "$tmp/full.out" ||
  fail "the error does not say the save failed: $(grep error "$tmp/full.out")"
expect_latest 6 "after the full disk"
[[ -e $ck/iter_0000008 ]] && fail "the failed save published iter_0000008"
[[ -z $(staging) ]] || fail "the failed save left its staging directory: $(staging)"
train after_full checkpoint.load="$ck" checkpoint.save="$ck" ||
  fail "resuming after the full disk exited $?: $(tail -5 "$tmp/after_full.out")"
metric "$tmp/ref.jsonl" | sed -n 7,8p >"$tmp/want"
metric "$tmp/after_full.jsonl" >"$tmp/got"
same_values "$tmp/want" "$tmp/got" "the run resumed after the full disk"
expect_latest 8 "after the save that followed the full disk"

# --- 3. a damaged latest checkpoint -------------------------------------------------------
shard=$ck/iter_0000008/shard_00000.safetensors
cp "$shard" "$tmp/intact.safetensors"
size=$(stat -c %s "$shard")
offset=$((size / 2))
byte=$(od -An -tu1 -j "$offset" -N1 "$shard" | tr -d ' ')
printf "$(printf '\\%03o' $((byte ^ 0x20)))" | dd of="$shard" bs=1 seek="$offset" conv=notrunc status=none
cmp -s "$shard" "$tmp/intact.safetensors" && fail "the byte was not flipped"
train flipped checkpoint.load="$ck"
code=$?
[[ $code == 1 ]] || fail "loading a flipped byte exited $code, expected 1: $(tail -5 "$tmp/flipped.out")"
grep -q "^mptrain: error: .*$shard: crc32c [0-9a-f]\{8\} does not match" "$tmp/flipped.out" ||
  fail "the flipped byte's error does not name the shard and its crc32c: $(grep error "$tmp/flipped.out")"
grep -qE "iteration +[0-9]+/" "$tmp/flipped.out" && fail "a run trained from a damaged checkpoint"

cp "$tmp/intact.safetensors" "$shard"
truncate -s -7 "$shard"
train truncated checkpoint.load="$ck"
code=$?
[[ $code == 1 ]] || fail "loading a truncated shard exited $code, expected 1: $(tail -5 "$tmp/truncated.out")"
grep -q "^mptrain: error: .*$shard: size $((size - 7)) bytes, but index.json records $size" "$tmp/truncated.out" ||
  fail "the truncated shard's error does not name the shard and its size: $(grep error "$tmp/truncated.out")"
grep -qE "iteration +[0-9]+/" "$tmp/truncated.out" && fail "a run trained from a damaged checkpoint"

# The intact shard loads again: the refusals were about the damage, nothing else.
cp "$tmp/intact.safetensors" "$shard"
train restored checkpoint.load="$ck" train.train_iters=9 ||
  fail "the restored checkpoint does not load: $(tail -5 "$tmp/restored.out")"
# checkpoint.most_recent_k = 2: saves every 2 iterations of 8 leave the newest two.
train pruned checkpoint.save="$tmp/pruned" checkpoint.save_interval=2 checkpoint.most_recent_k=2 ||
  fail "the pruned run failed: $(tail -5 "$tmp/pruned.out")"
kept=$(cd "$tmp/pruned" && ls -d iter_* | tr '\n' ' ')
[[ $kept == "iter_0000006 iter_0000008 " ]] || fail "most_recent_k=2 kept '$kept'"
echo "ckpt_faults.sh: ok"

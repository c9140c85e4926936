#!/usr/bin/env bash
# Data-parallel training from the command line: `--nproc-per-node 4` gives the one-rank
# loss curve, and a rank killed mid-run makes every other rank exit with an error naming
# the lost peer, within the timeout plus a few seconds.
# Usage: data_parallel.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"
pids=()
on_exit() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; }

common=("$fixture" train.global_batch_size=8 train.train_iters=4 logger.log_interval=1)
"$mptrain" --threads 1 "${common[@]}" logger.metrics_file="$tmp/one.jsonl" >"$tmp/out" 2>&1 ||
  fail "one rank exited $?: $(cat "$tmp/out")"
"$mptrain" --nproc-per-node 4 --threads 1 "${common[@]}" logger.metrics_file="$tmp/four.jsonl" >"$tmp/out" 2>&1 ||
  fail "four ranks exited $?: $(cat "$tmp/out")"
grep -q "^\[rank0\]: " "$tmp/out" || fail "no prefixed output: $(cat "$tmp/out")"
losses() { grep -oE '"lm_loss":[^,}]+' "$1" | cut -d: -f2; }
paste <(losses "$tmp/one.jsonl") <(losses "$tmp/four.jsonl") >"$tmp/pairs"
[[ $(wc -l <"$tmp/pairs") == 4 ]] || fail "expected 4 steps each: $(cat "$tmp/pairs")"
awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }' \
  "$tmp/pairs" || fail "DP=4 losses differ from one rank's: $(cat "$tmp/pairs")"

# Three ranks started as a job launcher would; rank 2 is killed once training runs.
port=$(( 20000 + RANDOM % 20000 ))
for r in 0 1 2; do
  RANK=$r WORLD_SIZE=3 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$mptrain" --threads 1 "$fixture" train.global_batch_size=6 train.micro_batch_size=2 train.train_iters=100000 \
    logger.log_interval=1 dist.distributed_timeout_minutes=0.1 >"$tmp/rank$r.out" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 300); do
  grep -q "iteration" "$tmp/rank0.out" && break
  sleep 0.1
done
grep -q "iteration" "$tmp/rank0.out" || fail "the 3-rank job did not start training: $(cat "$tmp"/rank*.out)"
kill -9 "${pids[2]}"
start=$SECONDS
for r in 0 1; do
  wait "${pids[$r]}"
  code=$?
  [[ $code == 1 ]] || fail "rank $r exited $code after its peer was killed, expected 1: $(tail -3 "$tmp/rank$r.out")"
  grep -q "rank 2" "$tmp/rank$r.out" || fail "rank $r does not name the lost peer: $(tail -3 "$tmp/rank$r.out")"
done
elapsed=$(( SECONDS - start ))
(( elapsed <= 6 + 5 )) || fail "the surviving ranks took ${elapsed} s to stop (timeout 6 s)"
echo "data_parallel.sh: ok (survivors stopped ${elapsed} s after the kill)"

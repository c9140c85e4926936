#!/usr/bin/env bash
# Pre-emption: SIGTERM (what SLURM sends before it kills a job) or SIGINT makes training
# finish its current step, save a checkpoint there and exit 0 — one process, and two ranks
# under the launcher — and the run resumed from that checkpoint continues like the
# uninterrupted one.
# Usage: signals.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
recipe=$src/recipes/tiny.toml
source "$src/tests/cli/lib/common.bash"
pid=
on_exit() { [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; }

# stop NAME NPROC SIGNAL: starts a long run, sends SIGNAL once 2 steps are logged, and
# checks it stopped cleanly with a checkpoint at the iteration it had reached.
stop() {
  local name=$1 n=$2 sig=$3
  "$mptrain" --nproc-per-node "$n" --threads 1 "$recipe" train.train_iters=100000 train.global_batch_size=8 \
    validation.eval_interval=null checkpoint.save="$tmp/$name.ckpt" logger.log_interval=1 \
    logger.metrics_file="$tmp/$name.jsonl" >"$tmp/$name.out" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    [[ -f $tmp/$name.jsonl && $(metric "$tmp/$name.jsonl" | wc -l) -ge 2 ]] && break
    kill -0 "$pid" 2>/dev/null || fail "$name ended early: $(tail -5 "$tmp/$name.out")"
    sleep 0.1
  done
  kill -"$sig" "$pid"
  wait "$pid"
  local code=$?
  pid=
  [[ $code == 0 ]] || fail "$name exited $code after SIG$sig, expected 0: $(tail -5 "$tmp/$name.out")"
  grep -q "stopped by a signal at iteration" "$tmp/$name.out" || fail "$name: no stop message: $(tail -5 "$tmp/$name.out")"
  local steps latest
  steps=$(metric "$tmp/$name.jsonl" | wc -l)
  latest=$(cat "$tmp/$name.ckpt/latest_checkpointed_iteration.txt" 2>/dev/null)
  [[ $latest == "$steps" ]] || fail "$name: the checkpoint is at iteration '$latest' but $steps steps were logged"
  echo "$steps"
}

steps=$(stop one 1 TERM) || exit 1
# Resumed for 2 more steps (the same schedule: train_iters unchanged, exit_interval stops
# it), the losses are the uninterrupted run's.
run 0 "$recipe" train.train_iters=100000 train.exit_interval=$((steps + 2)) train.global_batch_size=8 \
  validation.eval_interval=null logger.metrics_file="$tmp/straight.jsonl"
run 0 "$recipe" train.train_iters=100000 train.exit_interval=2 train.global_batch_size=8 \
  validation.eval_interval=null checkpoint.load="$tmp/one.ckpt" logger.metrics_file="$tmp/resumed.jsonl"
same_run straight resumed "resumed after SIGTERM" 2

# Two ranks under the launcher, SIGINT forwarded to both: both stop after the same step.
stop two 2 INT >/dev/null || exit 1

# Without the handler the signal stops the process as usual.
"$mptrain" "$recipe" train.train_iters=100000 checkpoint.exit_signal_handler=false >"$tmp/plain.out" 2>&1 &
pid=$!
sleep 1
kill -TERM "$pid"
wait "$pid"
code=$?
pid=
[[ $code == 143 ]] || fail "without the handler SIGTERM gave exit $code, expected 143"
echo "signals.sh: ok"

#!/usr/bin/env bash
# A short training run from the command line: exits 0, prints an iteration line per step,
# and --quiet keeps progress lines off.
# Usage: train_short.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

"$mptrain" --threads 2 "$fixture" train.train_iters=3 logger.log_interval=1 >"$tmp/out" 2>"$tmp/err" ||
  fail "training exited $?: $(cat "$tmp/err")"
lines=$(grep -ciE 'iteration +[0-9]+' "$tmp/out")
[[ $lines -ge 3 ]] || fail "expected 3 iteration lines, got $lines:"$'\n'"$(cat "$tmp/out" "$tmp/err")"
grep -qE 'iteration +3' "$tmp/out" || fail "no line for iteration 3: $(cat "$tmp/out")"
grep -q "finished at iteration 3" "$tmp/out" || fail "no closing line: $(cat "$tmp/out")"

# The explicit command, quiet: no progress on stdout.
"$mptrain" train --quiet "$fixture" train.train_iters=2 >"$tmp/out" 2>"$tmp/err" ||
  fail "quiet training exited $?: $(cat "$tmp/err")"
[[ -s $tmp/out ]] && fail "--quiet printed progress: $(cat "$tmp/out")"

# A runtime failure after the recipe is accepted still exits 1 with a message: a
# checkpoint to load that does not exist.
"$mptrain" "$fixture" checkpoint.load="$tmp/no-such-checkpoint" checkpoint.exit_on_missing_checkpoint=true \
  >"$tmp/out" 2>"$tmp/err"
code=$?
[[ $code == 1 ]] || fail "missing checkpoint exited $code, expected 1: $(cat "$tmp/err")"
grep -q "^mptrain: error: " "$tmp/err" || fail "missing checkpoint: no error line: $(cat "$tmp/err")"
echo "train_short.sh: ok"

#!/usr/bin/env bash
# Every bad recipe exits 1 and names the file, the line and the key at fault.
# Usage: bad_recipes.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
dir=$src/tests/data/bad_recipes
source "$src/tests/cli/lib/common.bash"

# expect_rejected FIXTURE LINE KEY [OVERRIDES...]: `mptrain config` and a training run
# both exit 1 with "mptrain: error:", FIXTURE:LINE and KEY in the message.
expect_rejected() {
  local fixture=$1 line=$2 key=$3; shift 3
  local file=$dir/$fixture
  [[ -f $file ]] || fail "fixture $file is missing"
  for command in config train; do
    "$mptrain" "$command" "$file" "$@" >"$tmp/out" 2>"$tmp/err"
    local code=$?
    [[ $code == 1 ]] || fail "$command $fixture exited $code, expected 1; stderr: $(cat "$tmp/err")"
    grep -q "^mptrain: error: " "$tmp/err" || fail "$command $fixture: no 'mptrain: error:' line"
    grep -qF "$fixture:$line" "$tmp/err" || fail "$command $fixture: '$fixture:$line' not in: $(cat "$tmp/err")"
    grep -qF "$key" "$tmp/err" || fail "$command $fixture: key '$key' not in: $(cat "$tmp/err")"
  done
}

expect_rejected syntax_error.toml 6 "syntax error"
expect_rejected unknown_key.toml 4 num_layer
grep -qF "did you mean 'model.num_layers'" "$tmp/err" || fail "no suggestion for num_layer: $(cat "$tmp/err")"
expect_rejected wrong_type.toml 5 hidden_size
expect_rejected impossible_layout.toml 4 num_layers
grep -qF "pipeline_model_parallel_size" "$tmp/err" || fail "layout message: $(cat "$tmp/err")"

# An override with an unknown key names it, with the override as its origin.
"$mptrain" config "$src/tests/data/cli_tiny.toml" model.num_layer=3 >"$tmp/out" 2>"$tmp/err"
code=$?
[[ $code == 1 ]] || fail "unknown override key exited $code, expected 1"
grep -qF "model.num_layer=3" "$tmp/err" || fail "override not named: $(cat "$tmp/err")"
grep -qF "unknown key 'model.num_layer'" "$tmp/err" || fail "unknown override key: $(cat "$tmp/err")"
[[ -s $tmp/out ]] && fail "a rejected recipe printed output: $(cat "$tmp/out")"

# An override of the wrong type.
"$mptrain" config "$src/tests/data/cli_tiny.toml" model.hidden_size=big >"$tmp/out" 2>"$tmp/err"
code=$?
[[ $code == 1 ]] || fail "wrong-type override exited $code, expected 1"
grep -qF "hidden_size" "$tmp/err" || fail "wrong-type override not named: $(cat "$tmp/err")"
# The world size comes from the launcher's environment: 3 data-parallel ranks cannot split
# a global batch of 4 into micro-batches of 2.
WORLD_SIZE=3 RANK=0 "$mptrain" config "$src/tests/data/cli_tiny.toml" >"$tmp/out" 2>"$tmp/err"
code=$?
[[ $code == 1 ]] || fail "WORLD_SIZE=3 exited $code, expected 1"
grep -qF "global_batch_size" "$tmp/err" || fail "WORLD_SIZE=3 not reported: $(cat "$tmp/err")"
RANK=x "$mptrain" config "$src/tests/data/cli_tiny.toml" >"$tmp/out" 2>"$tmp/err"
code=$?
[[ $code == 1 ]] || fail "RANK=x exited $code, expected 1"
grep -qF "RANK='x'" "$tmp/err" || fail "RANK=x not reported: $(cat "$tmp/err")"
echo "bad_recipes.sh: ok"

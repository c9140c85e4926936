#!/usr/bin/env bash
# `mptrain config` prints the resolved recipe; feeding that output back in prints the same
# configuration again. Overrides show up in it.
# Usage: config_roundtrip.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
source "$src/tests/cli/lib/common.bash"

# The first line names the file the recipe was resolved from, which differs by design.
body() { grep -v '^# mptrain recipe' "$1"; }

roundtrip() {
  local recipe=$1 name=$2; shift 2
  "$mptrain" config "$recipe" "$@" >"$tmp/$name.1.toml" 2>"$tmp/err" ||
    fail "mptrain config $recipe $* failed: $(cat "$tmp/err")"
  [[ -s $tmp/$name.1.toml ]] || fail "mptrain config $recipe printed nothing"
  "$mptrain" config "$tmp/$name.1.toml" >"$tmp/$name.2.toml" 2>"$tmp/err" ||
    fail "mptrain config on its own output failed: $(cat "$tmp/err")"
  diff <(body "$tmp/$name.1.toml") <(body "$tmp/$name.2.toml") >"$tmp/diff" ||
    fail "round trip of $recipe differs:"$'\n'"$(cat "$tmp/diff")"
}

fixture=$src/tests/data/cli_tiny.toml
roundtrip "$fixture" fixture
grep -qE '^num_layers = 2$' "$tmp/fixture.1.toml" || fail "num_layers missing from the resolved recipe"

roundtrip "$fixture" overridden model.num_layers=4 optimizer.lr=0.0005 train.train_iters=11
grep -qE '^num_layers = 4$' "$tmp/overridden.1.toml" || fail "override model.num_layers=4 not applied"
grep -qE '^train_iters = 11$' "$tmp/overridden.1.toml" || fail "override train.train_iters=11 not applied"
cmp -s "$tmp/fixture.1.toml" "$tmp/overridden.1.toml" && fail "overrides changed nothing"

# The explicit command and the options are accepted around it.
"$mptrain" --quiet --threads 1 config "$fixture" >"$tmp/again.toml" 2>"$tmp/err" ||
  fail "mptrain --quiet --threads 1 config failed: $(cat "$tmp/err")"
cmp -s "$tmp/fixture.1.toml" "$tmp/again.toml" || fail "options changed the printed recipe"

if [[ -f $src/recipes/tiny.toml ]]; then
  roundtrip "$src/recipes/tiny.toml" tiny
fi
echo "config_roundtrip.sh: ok"

#!/usr/bin/env bash
# mptrain's help, version and usage errors: exit 0 for help/version, 2 for a bad command line.
# Usage: help.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
source "$src/tests/cli/lib/common.bash"

for form in --help -h help; do
  run 0 "$form"
  for word in "mptrain [OPTIONS] RECIPE.toml" config train section.key=value --threads --quiet \
              --nproc-per-node --version "Exit status" "ckpt-info DIR" --tensors; do
    grep -qF -- "$word" "$tmp/out" || fail "mptrain $form does not mention '$word'"
  done
done
run 0 config --help   # help wins wherever it appears

run 0 --version
grep -qE '^mptrain [0-9]+\.[0-9]+\.[0-9]+$' "$tmp/out" || fail "--version printed '$(cat "$tmp/out")'"

# Usage errors: exit 2 with "mptrain: error:" and a pointer to --help.
run 2
grep -q "mptrain: error: missing the recipe file" "$tmp/err" || fail "no-argument message: $(cat "$tmp/err")"
grep -q "mptrain --help" "$tmp/err" || fail "usage error does not point to --help"
run 2 --frobnicate recipe.toml
grep -q "unknown option '--frobnicate'" "$tmp/err" || fail "unknown option message: $(cat "$tmp/err")"
run 2 config
run 2 --threads
run 2 --threads zero recipe.toml
grep -q -- "--threads expects an integer" "$tmp/err" || fail "--threads message: $(cat "$tmp/err")"
run 2 --threads=0 recipe.toml
run 2 recipe.toml not-an-override
grep -q "section.key=value" "$tmp/err" || fail "bad override message: $(cat "$tmp/err")"
run 2 --nproc-per-node 0 recipe.toml
grep -q -- "--nproc-per-node expects an integer" "$tmp/err" || fail "nproc message: $(cat "$tmp/err")"
run 2 --nproc-per-node=four train recipe.toml

# A missing recipe file is a runtime error (1), not a usage error.
run 1 config "$tmp/does-not-exist.toml"
grep -q "mptrain: error: .*does-not-exist.toml" "$tmp/err" || fail "missing file message: $(cat "$tmp/err")"
# --nproc-per-node 1 is the single-process run and is accepted.
run 1 --nproc-per-node 1 config "$tmp/does-not-exist.toml"
echo "help.sh: ok"

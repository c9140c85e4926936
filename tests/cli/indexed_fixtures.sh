#!/usr/bin/env bash
# The committed indexed dataset fixtures are exactly what tests/data/indexed/make_fixtures.py
# writes: regenerate them into a temporary directory and compare byte for byte.
# Usage: indexed_fixtures.sh MPTRAIN SOURCE_DIR
set -u
src=$2
dir=$src/tests/data/indexed
source "$src/tests/cli/lib/common.bash"

command -v python3 >/dev/null || fail "python3 is needed to regenerate the fixtures and was not found"
python3 "$dir/make_fixtures.py" "$tmp/gen" >"$tmp/out" 2>&1 || fail "make_fixtures.py exited $?: $(cat "$tmp/out")"

committed=$(cd "$dir" && ls -A | grep -vxE 'make_fixtures\.py|__pycache__' | sort)
generated=$(cd "$tmp/gen" && ls -A | sort)
[[ -n $generated ]] || fail "make_fixtures.py wrote nothing"
[[ $committed == "$generated" ]] ||
  fail "the committed files differ from the generated set:"$'\n'"$(diff <(echo "$committed") <(echo "$generated"))"
count=0
for f in $generated; do
  cmp "$dir/$f" "$tmp/gen/$f" || fail "$f differs from what make_fixtures.py writes (rerun it in $dir)"
  count=$((count + 1))
done
echo "indexed_fixtures.sh: ok ($count files)"

#!/usr/bin/env bash
# The shared library exports the C ABI and nothing else: every defined dynamic symbol is
# an mpt_ function, under the MPTRAIN_1 version node, and the whole header is there.
# Usage: exports.sh MPTRAIN SOURCE_DIR [LIBMPTRAIN.so]  (default: beside MPTRAIN)
set -u
mptrain=$1
src=$2
lib=${3:-$(dirname "$mptrain")/libmptrain.so}
fail() { echo "FAIL: $*" >&2; exit 1; }

[[ -f $lib ]] || fail "shared library $lib not found"
command -v nm >/dev/null || fail "nm not found"

# Defined dynamic symbols, "TYPE NAME"; A-type entries are version nodes.
symbols=$(nm -D --defined-only "$lib" | awk '{print $2, $3}')
[[ -n $symbols ]] || fail "no dynamic symbols in $lib"
strays=$(awk '$1 != "A" && $2 !~ /^mpt_/' <<<"$symbols")
[[ -z $strays ]] || fail "symbols outside the C ABI exported:"$'\n'"$strays"
non_functions=$(awk '$1 != "A" && $1 != "T"' <<<"$symbols")
[[ -z $non_functions ]] || fail "exported symbols that are not functions:"$'\n'"$non_functions"
grep -q "^A MPTRAIN_1$" <<<"$symbols" || fail "no MPTRAIN_1 version node"

# Every function the header declares is exported, and nothing the header does not declare.
declared=$(grep -oE '\bmpt_[a-z_]+\(' "$src/include/mptrain.h" | tr -d '(' | sort -u)
exported=$(awk '$1 == "T" {sub(/@.*/, "", $2); print $2}' <<<"$symbols" | sort -u)
[[ $declared == "$exported" ]] ||
  fail "header and library differ:"$'\n'"$(diff <(echo "$declared") <(echo "$exported"))"

soname=$(objdump -p "$lib" 2>/dev/null | awk '$1 == "SONAME" {print $2}')
[[ $soname == libmptrain.so.1 ]] || fail "SONAME is '$soname', expected libmptrain.so.1"
echo "exports.sh: ok ($(wc -l <<<"$exported") functions)"

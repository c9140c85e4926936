#!/usr/bin/env bash
# Python against the installed prefix: the ctypes module's tests, then the Python example.
# Usage: python.sh WORK SOURCE_DIR
work=$1
src=$2
source "$src/tests/packaging/lib.bash"
need python3 python3
export PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$src/bindings/python

python3 "$src/bindings/python/test_mptrain.py" -v >"$work/python-test.log" 2>&1 ||
  fail "bindings/python tests: $(tail -40 "$work/python-test.log")"
# The module loaded the installed library.
loaded=$(python3 -c 'import mptrain
print(next(l.split()[-1] for l in open("/proc/self/maps") if "libmptrain" in l))') || fail "import mptrain failed"
[[ $(realpath "$loaded") == $(realpath "$prefix/lib/libmptrain.so.1") ]] || fail "python loaded $loaded, not $prefix/lib"
check_example python python3 "$src/examples/python/train.py"
echo "python.sh: ok ($(grep -oE '^Ran [0-9]+ tests' "$work/python-test.log"), $(python3 --version))"

#!/usr/bin/env bash
# C and C++ against the installed prefix: the header compiles cleanly as C11 and C++ (every
# warning an error), a caller built with older, shorter structs still works, and the C
# example builds both as a CMake project using find_package(mptrain) and with a Makefile
# using pkg-config, and trains.
# Usage: c.sh WORK SOURCE_DIR
work=$1
src=$2
source "$src/tests/packaging/lib.bash"
need cc build-essential
need c++ build-essential
need make build-essential
out=$work/c
rm -rf "$out" && mkdir -p "$out"
strict=(-Wall -Wextra -pedantic -Werror)

# --- the header -------------------------------------------------------------------------------
cc -std=c11 "${strict[@]}" $(pkg-config --cflags mptrain) -o "$out/old_caller" "$src/tests/packaging/old_caller.c" \
  $(pkg-config --libs mptrain) -lm || fail "old_caller.c does not build as C11"
for std in c++11 c++20; do
  c++ -std=$std "${strict[@]}" $(pkg-config --cflags mptrain) -o "$out/header_$std" "$src/tests/packaging/header_cxx.cc" \
    $(pkg-config --libs mptrain) || fail "mptrain.h does not build as $std"
  "$out/header_$std" || fail "header_cxx ($std) exited $?"
done

# --- a caller compiled against shorter structs ---------------------------------------------------
"$out/old_caller" "$recipe" "${fast[@]}" >"$out/old_caller.out" 2>&1 || fail "old_caller: $(cat "$out/old_caller.out")"
uses_installed_library "$out/old_caller"

# --- find_package(mptrain) ------------------------------------------------------------------------
cmake -S "$src/examples/c" -B "$out/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  >"$out/cmake.log" 2>&1 || fail "configuring examples/c: $(cat "$out/cmake.log")"
cmake --build "$out/cmake" >>"$out/cmake.log" 2>&1 || fail "building examples/c: $(cat "$out/cmake.log")"
grep -q "warning" "$out/cmake.log" && fail "examples/c builds with warnings: $(grep -A3 warning "$out/cmake.log")"
uses_installed_library "$out/cmake/train_c"
check_example c_cmake "$out/cmake/train_c"

# The package's version file: 0.1 is what is installed, 0.2 and 1.0 are not compatible with it.
for want in 0.2 1.0; do
  mkdir -p "$out/version-$want"
  printf 'cmake_minimum_required(VERSION 3.16)\nproject(v LANGUAGES NONE)\nfind_package(mptrain %s REQUIRED)\n' "$want" \
    >"$out/version-$want/CMakeLists.txt"
  if cmake -S "$out/version-$want" -B "$out/version-$want/build" -DCMAKE_PREFIX_PATH="$prefix" >"$out/version.log" 2>&1; then
    fail "find_package(mptrain $want) accepted the installed $(pkg-config --modversion mptrain)"
  fi
  grep -q "not compatible\|version" "$out/version.log" || fail "find_package($want) failed for another reason: $(cat "$out/version.log")"
done

# --- pkg-config and make ---------------------------------------------------------------------------
mkdir -p "$out/make"
make -s -C "$out/make" -f "$src/examples/c/Makefile" CFLAGS="-O2 ${strict[*]}" >"$out/make.log" 2>&1 ||
  fail "make with examples/c/Makefile: $(cat "$out/make.log")"
uses_installed_library "$out/make/train_c"
check_example c_make "$out/make/train_c"
echo "c.sh: ok"

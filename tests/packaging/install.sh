#!/usr/bin/env bash
# Installs the build tree into WORK/prefix (cmake --install: copies what is built, builds
# nothing) and checks the layout a consumer relies on: the header, the library with its
# SONAME and only mpt_* symbols exported, the command, pkg-config metadata and the CMake
# package. The other packaging tests use this prefix.
# Usage: install.sh WORK SOURCE_DIR BUILD_DIR
set -uo pipefail
work=$1
src=$2
build=$3
prefix=$work/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }

rm -rf "$prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 || fail "cmake --install failed: $(cat "$work/install.log")"

major=$(sed -nE 's/^#define MPT_VERSION_MAJOR ([0-9]+)$/\1/p' "$src/include/mptrain.h")
minor=$(sed -nE 's/^#define MPT_VERSION_MINOR ([0-9]+)$/\1/p' "$src/include/mptrain.h")
patch=$(sed -nE 's/^#define MPT_VERSION_PATCH ([0-9]+)$/\1/p' "$src/include/mptrain.h")
version=$major.$minor.$patch
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "no version in mptrain.h"

# --- files -----------------------------------------------------------------------------------
cmp -s "$src/include/mptrain.h" "$prefix/include/mptrain.h" || fail "include/mptrain.h missing or not the source's"
for f in lib/libmptrain.so lib/libmptrain.so.1 lib/libmptrain.so.$version bin/mptrain lib/pkgconfig/mptrain.pc \
  lib/cmake/mptrain/mptrainConfig.cmake lib/cmake/mptrain/mptrainConfigVersion.cmake lib/cmake/mptrain/mptrainTargets.cmake; do
  [[ -e $prefix/$f ]] || fail "$f not installed; the prefix holds:"$'\n'"$(cd "$prefix" && find . | sort)"
done
[[ -L $prefix/lib/libmptrain.so && $(readlink "$prefix/lib/libmptrain.so") == libmptrain.so.1 ]] ||
  fail "lib/libmptrain.so is not a link to libmptrain.so.1"
[[ -L $prefix/lib/libmptrain.so.1 && $(readlink "$prefix/lib/libmptrain.so.1") == libmptrain.so.$version ]] ||
  fail "lib/libmptrain.so.1 is not a link to libmptrain.so.$version"
soname=$(readelf -d "$prefix/lib/libmptrain.so.$version" | sed -nE 's/.*\(SONAME\).*\[(.*)\]/\1/p')
[[ $soname == libmptrain.so.1 ]] || fail "SONAME is '$soname', expected libmptrain.so.1"
# Nothing installed may still point into the build tree.
if readelf -d "$prefix/lib/libmptrain.so.$version" "$prefix/bin/mptrain" | grep -E 'R(UN)?PATH' | grep -qF "$build"; then
  fail "an installed file keeps a run path into $build: $(readelf -d "$prefix/lib/libmptrain.so.$version" | grep PATH)"
fi
grep -rqF "$build" "$prefix/lib/pkgconfig" "$prefix/lib/cmake" && fail "installed metadata names the build tree $build"
"$prefix/bin/mptrain" --version >"$work/version.out" 2>&1 || fail "bin/mptrain --version exited $?"
grep -qF "$version" "$work/version.out" || fail "bin/mptrain --version printed: $(cat "$work/version.out")"

# --- only the C ABI is exported (the command-line test's check, on the installed copy) ------
bash "$src/tests/cli/exports.sh" "$prefix/bin/mptrain" "$src" "$prefix/lib/libmptrain.so.$version" ||
  fail "installed library exports"

# --- pkg-config --------------------------------------------------------------------------------
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[[ $(pkg-config --modversion mptrain) == "$version" ]] || fail "pkg-config --modversion: $(pkg-config --modversion mptrain 2>&1)"
pkg-config --atleast-version="$major.$minor" mptrain || fail "pkg-config --atleast-version $major.$minor"
# (word-split and joined again: pkg-config ends its output with a space)
cflags=$(echo $(pkg-config --cflags mptrain)) libs=$(echo $(pkg-config --libs mptrain))
[[ $cflags =~ ^-I([^ ]+)$ && $(realpath "${BASH_REMATCH[1]}") == $(realpath "$prefix/include") ]] ||
  fail "pkg-config --cflags gives '$cflags', expected -I$prefix/include"
[[ $libs =~ ^-L([^ ]+)\ -lmptrain$ && $(realpath "${BASH_REMATCH[1]}") == $(realpath "$prefix/lib") ]] ||
  fail "pkg-config --libs gives '$libs', expected -L$prefix/lib -lmptrain"

# The .pc file is relative to itself: a moved prefix still describes itself.
moved=$work/moved-prefix
rm -rf "$moved" && cp -a "$prefix" "$moved"
moved_libs=$(echo $(PKG_CONFIG_PATH=$moved/lib/pkgconfig pkg-config --libs mptrain))
[[ $moved_libs =~ ^-L([^ ]+) && $(realpath "${BASH_REMATCH[1]}") == $(realpath "$moved/lib") ]] ||
  fail "after moving the prefix pkg-config --libs gives '$moved_libs'"
rm -rf "$moved"
echo "install.sh: ok ($prefix, mptrain $version)"

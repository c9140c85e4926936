# Shared by the packaging test scripts, sourced with WORK and SOURCE_DIR set ($work, $src):
# the prefix packaging_install fills, the environment that finds it (pkg-config, the
# dynamic loader), fail(), and the run of an example program every language shares.
set -uo pipefail
prefix=$work/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }
# need TOOL PACKAGE: the tool is on PATH, else the test fails saying what installs it.
need() { command -v "$1" >/dev/null || fail "$1 not found: scripts/setup.sh installs it (Debian package $2)"; }

[[ -f $prefix/lib/pkgconfig/mptrain.pc ]] || fail "no installed prefix at $prefix: run packaging_install first"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# One rank, whatever launched the tests.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK MASTER_ADDR MASTER_PORT SLURM_PROCID SLURM_NTASKS \
  SLURM_LOCALID OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE OMPI_COMM_WORLD_LOCAL_RANK
# The bindings are under test, not the backend: the CPU reference trains, GPU or not.
export MPT_BACKEND=${MPT_BACKEND:-cpu}
recipe=$src/recipes/tiny.toml
# recipes/tiny.toml cut down to train in well under a second a step.
fast=(train.train_iters=3 scheduler.lr_warmup_iters=1 train.global_batch_size=8 model.seq_length=64 dataset.num_workers=0)

# uses_installed_library BINARY: the dynamic loader resolves libmptrain to the prefix's copy.
uses_installed_library() {
  local resolved
  resolved=$(ldd "$1" | awk '$1 ~ /^libmptrain\.so/ {print $3}')
  [[ -n $resolved && $(realpath "$resolved") == $(realpath "$prefix/lib/libmptrain.so.1") ]] ||
    fail "$1 loads libmptrain from '${resolved:-nowhere}', not $prefix/lib"
}

# check_example NAME COMMAND...: the example trains recipes/tiny.toml (cut down, 3 steps of
# host batches), prints a loss per step and saves a checkpoint at iteration 3; with a
# misspelt override it exits 1 and the library's message names the key.
check_example() {
  local name=$1 ckpt=$work/ckpt-$1
  shift
  rm -rf "$ckpt"
  "$@" "$recipe" "$ckpt" "${fast[@]}" >"$work/$name.out" 2>"$work/$name.err" ||
    fail "$name exited $?: $(cat "$work/$name.out" "$work/$name.err")"
  local steps
  steps=$(grep -cE '^step [123]: loss [0-9]+\.[0-9]+$' "$work/$name.out")
  [[ $steps == 3 ]] || fail "$name: expected 3 step lines:"$'\n'"$(cat "$work/$name.out")"
  [[ $(cat "$ckpt/latest_checkpointed_iteration.txt" 2>/dev/null) == 3 && -d $ckpt/iter_0000003 ]] ||
    fail "$name: no checkpoint at iteration 3 in $ckpt: $(ls -R "$ckpt" 2>&1)"
  rm -rf "$ckpt"

  "$@" "$recipe" "$ckpt" "${fast[@]}" train.trian_iters=2 >"$work/$name.out" 2>"$work/$name.err"
  local code=$?
  [[ $code == 1 ]] || fail "$name with a misspelt key exited $code, expected 1"
  grep -q "invalid configuration" "$work/$name.err" && grep -q "trian_iters" "$work/$name.err" ||
    fail "$name: the library's message did not come back: $(cat "$work/$name.err")"
  [[ ! -e $ckpt ]] || fail "$name: a failed run wrote $ckpt"
}

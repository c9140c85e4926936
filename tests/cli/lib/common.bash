# Shared by the command-line test scripts, sourced once `src` is set: a temporary directory
# removed at exit, fail(), and a single-rank environment (no torchrun, SLURM or Open MPI
# variables inherited from whatever runs the tests). A script with more to clean up at exit
# defines on_exit(). run() calls $mptrain, which the script sets before sourcing this.
tmp=$(mktemp -d)
on_exit() { :; }
trap 'on_exit; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK MASTER_ADDR MASTER_PORT SLURM_PROCID SLURM_NTASKS \
  SLURM_LOCALID OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE OMPI_COMM_WORLD_LOCAL_RANK
# run EXPECTED_EXIT ARGS...: runs mptrain, keeps stdout/stderr in $tmp/out and $tmp/err.
run() {
  local want=$1; shift
  "$mptrain" "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  [[ $got == "$want" ]] || fail "mptrain $* exited $got, expected $want; stderr: $(cat "$tmp/err")"
}

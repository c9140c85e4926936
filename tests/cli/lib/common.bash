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
# metric FILE [KEY]: the values of KEY (default lm_loss; training and validation events) in a
# metrics file, one per line.
metric() { grep -oE "\"${2:-lm_loss}\":[^,}]+" "$1" | cut -d: -f2; }
# same_values WANT GOT WHAT: two files of numbers, line by line, within 1e-5 relative.
same_values() {
  [[ -s $2 && $(wc -l <"$1") == $(wc -l <"$2") ]] || fail "$3: $(wc -l <"$2") values, expected $(wc -l <"$1")"
  paste "$1" "$2" |
    awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) { print "line " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }' ||
    fail "$3 differs: $(paste "$1" "$2")"
}
# train_run NAME NPROC ARGS...: mptrain on NPROC local ranks (--threads 1), metrics in
# $tmp/NAME.jsonl and output in $tmp/NAME.out; fails the test when it fails.
train_run() {
  local name=$1 n=$2
  shift 2
  "$mptrain" --nproc-per-node "$n" --threads 1 "$@" logger.metrics_file="$tmp/$name.jsonl" >"$tmp/$name.out" 2>&1 ||
    fail "$name exited $?: $(tail -5 "$tmp/$name.out")"
}
# same_run WANT RUN WHAT [TAIL]: run RUN's metric values equal run WANT's (its last TAIL when given).
same_run() {
  if [[ -n ${4:-} ]]; then metric "$tmp/$1.jsonl" | tail -"$4" >"$tmp/want"; else metric "$tmp/$1.jsonl" >"$tmp/want"; fi
  metric "$tmp/$2.jsonl" >"$tmp/got"
  same_values "$tmp/want" "$tmp/got" "$3"
}
# train_fixture NAME NPROC ARGS...: train_run of $fixture (which the script sets) for 6 steps
# of 2 micro-batches.
train_fixture() {
  local name=$1 n=$2
  shift 2
  train_run "$name" "$n" "$fixture" train.global_batch_size=8 train.train_iters=6 "$@"
}

#!/usr/bin/env bash
# GPU training throughput, mptrain (eager, and with CUDA graphs) against the same models in
# PyTorch (torch.compile), in one run that fits one device call (bench/gpu/README.md).
#
#   bench/gpu/run.sh [--build-dir DIR] [--models "gpt2_124m llama1b"] [--budget SECONDS]
#                    [--peak-tflops TFLOPS] [--torch-own-max]
#   bench/gpu/run.sh --pack [--build-dir DIR]     here: build for sm_90 and pack DIR/gpu-pack
#   bench/gpu/run.sh --cpu-smoke [--build-dir DIR] both models shrunk, on the CPU: the harness
#                                                  end to end
#
# The build: DIR (or $MPT_BUILD_DIR) holding bench_gpu_train, either a build directory or the
# folder --pack makes (the binary and the shared libraries the GPU machine lacks, under lib/);
# without one, build-gpubench is configured (CUDA, sm_90) and built, inside the budget.
# For each model, smaller first: mptrain tries descending micro-batches (the first that fits
# is timed); "mptrain+graphs" (model.cuda_graph_impl=local) runs at that size; PyTorch tries
# the same sizes from mptrain's largest down (the comparison is at the largest size both fit;
# --torch-own-max searches PyTorch's own largest from the top); if PyTorch fits less, both
# mptrain variants run again at that size. Every run is time-boxed so the whole
# script ends within --budget (default 540 s). JSON lines, logs and the table go to $OUT when
# set (else a temporary folder, named at the end). PYTHON (default python3) runs PyTorch.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
START=$(date +%s)

mode=gpu
build_dir=${MPT_BUILD_DIR:-}
budget=540
peak=989
models="gpt2_124m llama1b"
torch_own_max=0
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) mode=smoke ;;
    --pack) mode=pack ;;
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift ;;
    --models) models=${2:?--models needs names}; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --peak-tflops) peak=${2:?--peak-tflops needs a number}; shift ;;
    --torch-own-max) torch_own_max=1 ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
case "$budget" in ''|*[!0-9]*) echo "run.sh: --budget: expected whole seconds, got '$budget'" >&2; exit 2 ;; esac
for m in $models; do
  [ -f "$HERE/models/$m.toml" ] || { echo "run.sh: no recipe bench/gpu/models/$m.toml" >&2; exit 2; }
done

say() { echo "run.sh: $*" >&2; }
left() { echo $((START + budget - $(date +%s))); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# --- the build -------------------------------------------------------------------------------
build() {
  local dir=$1 cuda=$2
  say "building bench_gpu_train in $dir (CUDA $cuda)"
  mkdir -p "$dir"
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DMPT_WITH_CUDA="$cuda" -DCMAKE_CUDA_ARCHITECTURES=90 \
    >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log" >&2; exit 1; }
  cmake --build "$dir" -j "${MPT_BUILD_JOBS:-$(nproc)}" --target bench_gpu_train >&2
}

# Finds the libraries bench_gpu_train needs that the loader does not: the packed ones (lib/
# beside the binary), then the CUDA toolkit's and the NVIDIA wheels PyTorch brings.
resolve_libs() {
  local bin=$1 dir lib found missing packed
  packed=$(dirname "$bin")/lib
  if [ -d "$packed" ]; then export LD_LIBRARY_PATH="$packed${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
  missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}') || true
  [ -z "$missing" ] && return 0
  local dirs="/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib"
  dirs="$dirs $("$PYTHON" -c 'import site; print(" ".join(p + "/nvidia" for p in site.getsitepackages()))' 2>/dev/null || true)"
  for lib in $missing; do
    found=""
    for dir in $dirs; do
      [ -d "$dir" ] || continue
      found=$(find "$dir" -maxdepth 4 -name "$lib" -print -quit 2>/dev/null)
      [ -n "$found" ] && break
    done
    if [ -n "$found" ]; then export LD_LIBRARY_PATH="${found%/*}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
  done
  missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}') || true
  if [ -n "$missing" ]; then
    say "$bin needs libraries found nowhere: $(echo "$missing" | paste -sd' ' -)"
    exit 1
  fi
}

find_binary() {
  local dir=$1
  if [ -x "$dir/bench_gpu_train" ]; then echo "$dir/bench_gpu_train"; return; fi
  say "no bench_gpu_train in $dir"
  exit 1
}

# --- --pack: the folder a device call carries ------------------------------------------------
if [ "$mode" = pack ]; then
  dir=${build_dir:-$ROOT/build-gpubench}
  command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { say "--pack needs the CUDA toolkit"; exit 1; }
  MPT_BUILD_JOBS=${MPT_BUILD_JOBS:-2} build "$dir" ON
  bin=$dir/bench_gpu_train
  grep -q 'mptrain: CUDA backend ON' "$dir/configure.log" ||
    { say "$dir was configured without the CUDA backend"; exit 1; }
  pack=$dir/gpu-pack
  rm -rf "$pack"
  mkdir -p "$pack/lib"
  cp "$bin" "$pack/"
  # Everything the loader resolves outside the C runtime and the large CUDA libraries (cuBLAS,
  # NCCL), which the GPU machine has and which would not fit the carry limit.
  ldd "$bin" | awk '$3 ~ /^\// {print $1, $3}' | while read -r name path; do
    case "$name" in
      linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libstdc++*|libgcc_s*) ;;
      libcublas*|libnccl*) ;;
      *) cp -L "$path" "$pack/lib/$name" ;;
    esac
  done
  if command -v cuobjdump >/dev/null || [ -x /usr/local/cuda/bin/cuobjdump ]; then
    objdump_bin=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
    "$objdump_bin" --list-elf "$pack/bench_gpu_train" 2>/dev/null | grep -q sm_90 ||
      { say "bench_gpu_train holds no sm_90 code"; exit 1; }
  fi
  say "packed $(du -sh "$pack" | cut -f1) in $pack: $(cd "$pack/lib" && echo *)"
  rel=${pack#"$ROOT"/}
  echo "device call: carry [\"$rel\"], command \"bench/gpu/run.sh --build-dir $rel\""
  exit 0
fi

# --- the build to run --------------------------------------------------------------------------
if [ -n "$build_dir" ]; then
  bin=$(find_binary "$build_dir")
else
  build_dir=$ROOT/build-gpubench
  if [ "$mode" = smoke ] && [ -x "$build_dir/bench_gpu_train" ]; then
    # Refresh an existing build (only what changed is compiled).
    cmake --build "$build_dir" -j "${MPT_BUILD_JOBS:-2}" --target bench_gpu_train >&2
  else
    build "$build_dir" ON
  fi
  bin=$build_dir/bench_gpu_train
fi
resolve_libs "$bin"

# Four files, written as the runs go (a device call brings back at most 8): the JSON lines,
# every run's log one after the other, and the table as text and as Markdown.
results=${OUT:-$(mktemp -d /tmp/gpu_bench.XXXXXX)}
mkdir -p "$results"
jsonl=$results/gpu_bench.jsonl
logs=$results/gpu_bench_logs.txt
: >"$jsonl"
: >"$logs"
work=$(mktemp -d /tmp/gpu_bench_run.XXXXXX)
trap 'rm -rf "$work"' EXIT
say "results in $results"

# run NAME SECONDS COMMAND...: COMMAND under a time limit; its JSON lines go to the results,
# its output to the logs (the end of it shown on failure). Returns the command's status.
run() {
  local name=$1 limit=$2 rc=0
  shift 2
  if [ "$limit" -lt 20 ]; then
    say "$name: skipped, its share of the time budget is down to $limit s"
    return 124
  fi
  say "$name (at most $limit s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$work/$name.out" 2>"$work/$name.log" || rc=$?
  grep '^{' "$work/$name.out" >>"$jsonl" || true
  { echo "=== $name (status $rc): $*"; cat "$work/$name.log" "$work/$name.out"; } >>"$logs"
  case $rc in
    0) ;;
    3) say "$name: no micro-batch fitted" ;;
    124|137) say "$name: stopped at its time limit" ;;
    *) say "$name: failed with status $rc; its log ends:"; tail -n 20 "$work/$name.log" >&2 ;;
  esac
  return $rc
}

# The micro-batch of the last "ok" line of an implementation for a model, or nothing.
fitted() {
  "$PYTHON" - "$jsonl" "$1" "$2" <<'EOF'
import json, sys
path, model, impl = sys.argv[1:]
sizes = [j["micro_batch"] for j in map(json.loads, open(path))
         if j.get("model") == model and j.get("impl") == impl and j.get("status") == "ok"]
print(sizes[-1] if sizes else "")
EOF
}

# Descending micro-batches to try: from what one H200 may hold down to 1.
candidates() {
  case "$1" in
    gpt2_124m) echo "96,64,48,32,24,16,12,8,4,2,1" ;;
    llama1b) echo "48,40,32,24,20,16,12,8,6,4,2,1" ;;
    *) echo "32,16,8,4,2,1" ;;
  esac
}

# Sizes of a descending list not above $2.
not_above() {
  echo "$1" | tr ',' '\n' | awk -v max="$2" '$1 <= max' | paste -sd, -
}

have_torch=1
"$PYTHON" -c 'import torch' 2>/dev/null || have_torch=0

# --- --cpu-smoke -------------------------------------------------------------------------------
if [ "$mode" = smoke ]; then
  export MPT_BACKEND=cpu
  [ "$have_torch" = 1 ] || say "PyTorch is not importable by $PYTHON: checking the mptrain half only"
  # The first micro-batch asked for is far beyond memory, to go through the out-of-memory
  # fallback; the address space is capped (8 GiB) so that the failing allocation fails at once
  # whatever the machine's overcommit policy, and the machine is never short of memory.
  capped=(bash -c 'ulimit -v 8388608 && exec "$@"' capped)
  for m in $models; do
    recipe=$HERE/models/$m.toml
    tiny=$("$PYTHON" "$HERE/torch_gpt.py" "$recipe" --print-tiny-overrides)
    # The full-size model as each side builds it (parameters, FLOPs), then the tiny one trained.
    run "${m}_mptrain_describe" 60 "$bin" "$recipe" --name "$m" --micro-batch 8 --describe || exit 1
    # shellcheck disable=SC2086
    run "${m}_mptrain" 300 "${capped[@]}" "$bin" "$recipe" $tiny --name "$m" --micro-batch 100000,2 \
      --warmup 1 --steps 2 || exit 1
    # The graphs variant on the emulated device, which records graphs as the GPU does: recorded at
    # the second step (1 engine warm-up step), replayed at the third.
    # shellcheck disable=SC2086
    run "${m}_mptrain_graphs" 300 env MPT_BACKEND=cpu-device "$bin" "$recipe" $tiny model.cuda_graph_impl=local \
      model.cuda_graph_warmup_steps=1 --name "$m" --impl mptrain+graphs --micro-batch 2 --warmup 1 --steps 2 || exit 1
    if [ "$have_torch" = 1 ]; then
      run "${m}_torch_describe" 120 "$PYTHON" "$HERE/torch_gpt.py" "$recipe" --name "$m" --micro-batch 8 \
        --describe || exit 1
      run "${m}_torch" 600 "${capped[@]}" "$PYTHON" "$HERE/torch_gpt.py" "$recipe" --name "$m" --device cpu \
        --tiny --micro-batch 100000,2 --warmup 1 --steps 2 || exit 1
    fi
  done
  check=(--check --require-oom --require-graphs)
  [ "$have_torch" = 1 ] && check+=(--require-torch)
  "$PYTHON" "$HERE/report.py" "$jsonl" "${check[@]}" --markdown "$results/gpu_bench_table.md"
  say "CPU smoke passed ($(( $(date +%s) - START )) s)"
  exit 0
fi

# --- on the GPU --------------------------------------------------------------------------------
[ "$have_torch" = 1 ] || say "PyTorch is not importable by $PYTHON: mptrain only"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2

# The overrides of the "mptrain+graphs" runs: a micro-batch's forward and backward recorded as
# CUDA graphs after 2 steps, inside the bench's 3 warm-up steps, and replayed in the timed ones.
graphs_overrides=(model.cuda_graph_impl=local model.cuda_graph_warmup_steps=2)
n_models=$(echo "$models" | wc -w)
i=0
for m in $models; do
  i=$((i + 1))
  recipe=$HERE/models/$m.toml
  # What this model may use: an equal share of what is left for it and the models after it.
  share=$(( $(left) / (n_models - i + 1) ))
  t0=$(date +%s)
  spent() { echo $(( $(date +%s) - t0 )); }
  common_flags=(--name "$m" --peak-tflops "$peak" --warmup 3 --steps 20)

  limit=$(min $((share / 4)) 90)
  run "${m}_mptrain" "$limit" "$bin" "$recipe" "${common_flags[@]}" --micro-batch "$(candidates "$m")" \
    --time-budget $((limit - 15)) || true
  mb_mptrain=$(fitted "$m" mptrain)

  # mptrain with CUDA graphs at the size eager mptrain fitted (one size: no search). An error
  # (status 1 or 2, not memory or time) would repeat: no second graphs run then.
  graphs_rc=0
  if [ -n "$mb_mptrain" ]; then
    limit=$(min $((share / 8)) 60)
    run "${m}_mptrain_graphs" "$limit" "$bin" "$recipe" "${graphs_overrides[@]}" "${common_flags[@]}" \
      --impl mptrain+graphs --micro-batch "$mb_mptrain" --time-budget $((limit - 15)) || graphs_rc=$?
  fi

  mb_torch=""
  if [ "$have_torch" = 1 ]; then
    sizes=$(candidates "$m")
    [ -n "$mb_mptrain" ] && [ "$torch_own_max" = 0 ] && sizes=$(not_above "$sizes" "$mb_mptrain")
    # What is kept back: the re-runs at the size both fit (both mptrain variants, or PyTorch).
    limit=$(min $((share - $(spent) - (share / 5))) 240)
    run "${m}_torch" "$limit" "$PYTHON" "$HERE/torch_gpt.py" "$recipe" "${common_flags[@]}" --micro-batch "$sizes" \
      --time-budget $((limit - 20)) || true
    mb_torch=$(fitted "$m" torch)
  fi

  if [ -n "$mb_mptrain" ] && [ -n "$mb_torch" ] && [ "$mb_torch" != "$mb_mptrain" ]; then
    # Compare at the largest size both fit.
    if [ "$mb_torch" -lt "$mb_mptrain" ]; then
      # Half of what is left for eager mptrain, the rest for the graphs variant.
      limit=$(min $(((share - $(spent)) / 2)) 60)
      run "${m}_mptrain_at_${mb_torch}" "$limit" "$bin" "$recipe" "${common_flags[@]}" --micro-batch "$mb_torch" \
        --time-budget $((limit - 15)) || true
      if [ "$graphs_rc" != 1 ] && [ "$graphs_rc" != 2 ]; then
        limit=$(min $((share - $(spent))) 60)
        run "${m}_mptrain_graphs_at_${mb_torch}" "$limit" "$bin" "$recipe" "${graphs_overrides[@]}" \
          "${common_flags[@]}" --impl mptrain+graphs --micro-batch "$mb_torch" --time-budget $((limit - 15)) || true
      fi
    else
      limit=$(min $((share - $(spent))) 150)
      run "${m}_torch_at_${mb_mptrain}" "$limit" "$PYTHON" "$HERE/torch_gpt.py" "$recipe" "${common_flags[@]}" \
        --micro-batch "$mb_mptrain" --time-budget $((limit - 20)) || true
    fi
  fi
done

echo
"$PYTHON" "$HERE/report.py" "$jsonl" --markdown "$results/gpu_bench_table.md" | tee "$results/gpu_bench_table.txt"
say "done in $(( $(date +%s) - START )) s; JSON lines, logs and tables in $results"

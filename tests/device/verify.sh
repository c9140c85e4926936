#!/usr/bin/env bash
# The GPU verification in one run: every device test, the loss check against PyTorch and the
# throughput benchmarks beside torch.compile, then one table (tests/device/README.md).
#
#   tests/device/verify.sh --pack [--build-dir DIR] [--pack-dir DIR]
#       here, on a machine with the CUDA toolkit and mptrain's build dependencies: builds
#       mpt_device_tests, bench_gpu_train and mptrain for sm_90 in DIR (default build-gpubench)
#       and packs them with the shared libraries a GPU machine lacks into DIR/verify-pack
#   tests/device/verify.sh --pack-dir DIR --results DIR [--expect-gpu] [--budget SECONDS]
#       on the GPU machine: the whole verification from a pack, within --budget (default 540)
#   tests/device/verify.sh --dry-run --pack-dir DIR [--results DIR]
#       prints every command the GPU run would run and checks the pack; runs nothing heavy
#   tests/device/verify.sh --cpu-smoke [--build-dir DIR] [--results DIR] [--no-bench]
#       the same flow on the CPU (device tests skip, loss checks on shrunk models, the
#       benchmark's own --cpu-smoke): proves the script before a GPU run
#
# PYTHON: the interpreter with torch, numpy and safetensors (default: python3 on the GPU
# machine; the test environment of scripts/python_env.sh for --cpu-smoke). Results go to
# --results (default $OUT when set, else a temporary folder) as at most 8 files, what a
# device call brings back: verify_table.txt (the table), verify_summary.json (the verdict),
# verify.log (the whole run's output), verify_results.tar.gz (every stage's logs and JSON),
# device_tests.json, parity_NAME.json (each loss check), gpu_bench.jsonl, gpu_bench_table.md.
# Exit status: 0 everything passed; 1 a device test failed, a loss check failed or could not
# run, or a stage failed; 2 a usage error or an incomplete pack; 3 a GPU was expected
# (nvidia-smi lists one, or --expect-gpu) and no device test that needs one ran.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
START=$(date +%s)

mode=gpu
build_dir=
pack_dir=
results=${OUT:-}
expect_gpu=0
budget=540
bench=1
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) mode=pack ;;
    --dry-run) mode=dry ;;
    --cpu-smoke) mode=smoke ;;
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift ;;
    --pack-dir) pack_dir=${2:?--pack-dir needs a directory}; shift ;;
    --results) results=${2:?--results needs a directory}; shift ;;
    --expect-gpu) expect_gpu=1 ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --no-bench) bench=0 ;;
    -h|--help) usage ;;
    *) echo "verify.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
case "$budget" in ''|*[!0-9]*) echo "verify.sh: --budget: expected whole seconds, got '$budget'" >&2; exit 2 ;; esac

say() { echo "verify.sh: $*" >&2; }
left() { echo $((START + budget - $(date +%s))); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# The binaries a verification runs, as laid out in a build directory and in a pack.
BINARIES="mptrain bench_gpu_train tests/mpt_device_tests"
# Libraries the GPU machine brings (the CUDA toolkit, the NVIDIA wheels beside PyTorch, the
# driver): too large to carry, and better matched to its driver there.
is_machine_lib() {
  case "$1" in
    libcublas*|libnccl*|libcudnn*|libcudart*|libcuda.so*|libnvidia*) return 0 ;;
    libnvrtc*|libnvJitLink*|libcufft*|libcurand*|libcusolver*|libcusparse*|libcupti*) return 0 ;;
    *) return 1 ;;
  esac
}

# --- --pack: the folder a device call carries ----------------------------------------------------
if [ "$mode" = pack ]; then
  dir=${build_dir:-$ROOT/build-gpubench}
  pack=${pack_dir:-$dir/verify-pack}
  command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { say "--pack needs the CUDA toolkit (nvcc)"; exit 1; }
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    say "configuring $dir (Release, CUDA, sm_90)"
    mkdir -p "$dir"
    cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DMPT_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >&2
  fi
  grep -q '^MPT_WITH_CUDA:BOOL=ON' "$dir/CMakeCache.txt" || { say "$dir is configured without CUDA"; exit 1; }
  arch=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$dir/CMakeCache.txt")
  case ",$arch," in *,90*|*";90"*) ;; *) [ -z "$arch" ] || say "warning: $dir builds CUDA architectures '$arch' (the pack is for sm_90)" ;; esac
  say "building mpt_device_tests bench_gpu_train mptrain_cli in $dir (-j${MPT_BUILD_JOBS:-2})"
  cmake --build "$dir" -j "${MPT_BUILD_JOBS:-2}" --target mpt_device_tests bench_gpu_train mptrain_cli >&2
  rm -rf "$pack"
  mkdir -p "$pack/lib" "$pack/tests"
  for b in $BINARIES; do
    [ -x "$dir/$b" ] || { say "$dir/$b was not built"; exit 1; }
    cp "$dir/$b" "$pack/$b"
  done
  # Every library the loader resolves for the binaries, but the C runtime's and the machine's own.
  for b in $BINARIES; do ldd "$pack/$b"; done | awk '$2 == "=>" {print $1, $3}' | sort -u | while read -r name path; do
    case "$name" in
      linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libstdc++*|libgcc_s*) continue ;;
    esac
    if is_machine_lib "$name"; then continue; fi
    if [ "$path" = "not" ]; then say "warning: $name is not found here either"; continue; fi
    cp -L "$path" "$pack/lib/$name"
  done
  expected=$(for b in $BINARIES; do ldd "$pack/$b"; done | awk '$2 == "=>" {print $1}' | sort -u |
    while read -r name; do if is_machine_lib "$name"; then echo "$name"; fi; done | paste -sd' ' -)
  if command -v cuobjdump >/dev/null; then
    for b in $BINARIES; do
      cuobjdump --list-elf "$pack/$b" 2>/dev/null | grep -q sm_90 || { say "$b holds no sm_90 code"; exit 1; }
    done
  fi
  {
    echo "mptrain verification pack"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u '+%Y-%m-%d %H:%M UTC') with $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/CUDA \1/p')"
    echo "binaries: $BINARIES"
    echo "packed libraries: $(cd "$pack/lib" && echo *)"
    echo "expected on the GPU machine: $expected"
  } >"$pack/MANIFEST.txt"
  size_kib=$(du -sk "$pack" | cut -f1)
  [ "$size_kib" -lt $((64 * 1024)) ] || { say "the pack is $((size_kib / 1024)) MiB: over the 64 MiB a device call carries"; exit 1; }
  # What a device call carries besides the pack: the tracked files and those git does not ignore.
  tree_kib=$(cd "$ROOT" && { git ls-files -z; git ls-files -z --others --exclude-standard; } |
    xargs -0 du -skc 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
  rel=${pack#"$ROOT"/}
  say "packed $((size_kib / 1024)) MiB in $rel ($(cd "$pack/lib" && echo *)); the working tree that travels: $((tree_kib / 1024)) MiB"
  echo "device call: carry [\"$rel\"], command \"tests/device/verify.sh --pack-dir $rel --results \$OUT\""
  exit 0
fi

# --- the binaries and the libraries they need ----------------------------------------------------
if [ "$mode" = smoke ]; then
  bin_dir=${build_dir:-${pack_dir:-$ROOT/build}}
else
  [ -n "$pack_dir" ] || { say "--pack-dir DIR is needed (the folder --pack made)"; usage; }
  bin_dir=$pack_dir
fi
[ -d "$bin_dir" ] || { say "no directory $bin_dir"; exit 2; }
bin_dir=$(cd "$bin_dir" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ "$mode" = smoke ]; then
    PYTHON=$("$ROOT/scripts/python_env.sh" | tail -1) || { say "no Python test environment (scripts/python_env.sh)"; exit 1; }
  else
    PYTHON=python3
  fi
fi
export PYTHON

# The folders holding what the binaries need and the loader does not find: the pack's lib/,
# the CUDA toolkit's, and the NVIDIA wheels beside PyTorch (cuDNN always: its engine
# libraries are opened at run time, not linked).
resolve_libs() {
  local dirs dir lib found missing
  [ -d "$bin_dir/lib" ] && export LD_LIBRARY_PATH="$bin_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  dirs="/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib"
  dirs="$dirs $("$PYTHON" -c 'import site; print(" ".join(p + "/nvidia" for p in site.getsitepackages()))' 2>/dev/null || true)"
  cudnn=""
  for dir in $dirs; do
    [ -d "$dir" ] || continue
    found=$(find "$dir" -maxdepth 4 -name 'libcudnn.so.9' -print -quit 2>/dev/null)
    if [ -n "$found" ]; then cudnn=${found%/*}; break; fi
  done
  [ -n "$cudnn" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$cudnn"
  missing=$(for b in $BINARIES; do [ -x "$bin_dir/$b" ] && ldd "$bin_dir/$b" 2>/dev/null; done | awk '/not found/ {print $1}' | sort -u)
  for lib in $missing; do
    found=""
    for dir in $dirs; do
      [ -d "$dir" ] || continue
      found=$(find "$dir" -maxdepth 4 -name "$lib" -print -quit 2>/dev/null)
      [ -n "$found" ] && break
    done
    [ -n "$found" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}${found%/*}"
  done
  unresolved=$(for b in $BINARIES; do [ -x "$bin_dir/$b" ] && ldd "$bin_dir/$b" 2>/dev/null; done |
    awk '/not found/ {print $1}' | sort -u | paste -sd' ' -)
}

# --- what runs, stage by stage -------------------------------------------------------------------
# The loss check: the recipe's model (shrunk on the CPU) trained 20 steps by mptrain from the
# weights it saves first, and by PyTorch from those weights on the batches mptrain dumps.
# Real text (the embedded corpus, byte tokens: uniform mock tokens teach nothing), the
# recipe's optimizer; the warmup shortened to 3 iterations and the cosine decay to the 20, so
# the learning rate moves through warmup and decay within the check (the schedule is
# implemented on both sides and compared).
LOSS_STEPS=20
loss_overrides() {  # MODEL PRECISION [tiny]
  local m=$1 precision=$2 words
  words="train.micro_batch_size=2 train.global_batch_size=4 train.train_iters=$LOSS_STEPS dataset.source=corpus"
  words="$words scheduler.lr_warmup_iters=3 checkpoint.save_optim=false logger.log_interval=5"
  words="$words mixed_precision=$precision"
  [ "${3:-}" = tiny ] && words="$("$PYTHON" "$ROOT/bench/gpu/torch_gpt.py" "$ROOT/bench/gpu/models/$m.toml" --print-tiny-overrides) $words"
  echo "$words"
}
# loss_check NAME MODEL PRECISION BACKEND TORCH_DEVICE SECONDS [tiny]
loss_check() {
  local name=$1 m=$2 precision=$3 backend=$4 device=$5 limit=$6 tiny=${7:-} dir ov recipe rc=0
  dir=$work/loss/$name
  recipe=$ROOT/bench/gpu/models/$m.toml
  ov=$(loss_overrides "$m" "$precision" "$tiny")
  if [ "$dry" = 1 ]; then
    echo "  $bin_dir/mptrain -q batches $recipe $ov --iterations $LOSS_STEPS --output $dir/batches.npy"
    echo "  MPT_BACKEND=$backend $bin_dir/mptrain train --save-initial $recipe $ov checkpoint.save=$dir/ckpt logger.metrics_file=$dir/metrics.jsonl"
    echo "  $PYTHON bench/gpu/torch_parity.py $recipe $ov --initial $dir/ckpt --batches $dir/batches.npy --metrics $dir/metrics.jsonl --final $dir/ckpt --device $device --json $dir/parity.json"
    return 0
  fi
  if [ "$limit" -lt 30 ]; then
    mkdir -p "$dir"; echo "not run: its share of the time budget is down to $limit s" >"$dir/status"; return 1
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  local until=$(( $(date +%s) + limit ))
  # Seconds to the stage's end, at least 1 (timeout 0 would mean no limit).
  remaining() { local r=$((until - $(date +%s))); echo $((r < 1 ? 1 : r)); }
  say "loss check $name (at most $limit s): $m $precision, mptrain on $backend, PyTorch on $device"
  # shellcheck disable=SC2086
  "$bin_dir/mptrain" -q batches "$recipe" $ov --iterations "$LOSS_STEPS" --output "$dir/batches.npy" \
    >"$dir/mptrain.log" 2>&1 || rc=$?
  # shellcheck disable=SC2086
  [ "$rc" = 0 ] && { MPT_BACKEND=$backend timeout --kill-after=10 "$(remaining)" \
    "$bin_dir/mptrain" train --save-initial "$recipe" $ov checkpoint.save="$dir/ckpt" \
    logger.metrics_file="$dir/metrics.jsonl" >>"$dir/mptrain.log" 2>&1 || rc=$?; }
  if [ "$rc" != 0 ]; then
    echo "mptrain failed with status $rc: $(tail -n 3 "$dir/mptrain.log" | tr '\n' ' ')" >"$dir/status"
    say "loss check $name: $(cat "$dir/status")"
    return 1
  fi
  # One thread on the CPU: with more, torch's OpenMP team spins against mptrain's on 2 cores.
  # shellcheck disable=SC2086
  env ${cpu_threads:+OMP_NUM_THREADS=$cpu_threads} timeout --kill-after=10 "$(remaining)" \
    "$PYTHON" "$ROOT/bench/gpu/torch_parity.py" "$recipe" $ov --initial "$dir/ckpt" --batches "$dir/batches.npy" \
    --metrics "$dir/metrics.jsonl" --final "$dir/ckpt" --device "$device" --json "$dir/parity.json" \
    >"$dir/parity.log" 2>&1 || rc=$?
  grep -v '^{' "$dir/parity.log" >&2 || true
  if [ ! -s "$dir/parity.json" ]; then
    echo "torch_parity.py failed with status $rc: $(tail -n 3 "$dir/parity.log" | tr '\n' ' ')" >"$dir/status"
    say "loss check $name: $(cat "$dir/status")"
  fi
  # The checkpoints are large (the 1B model's: 3.4 GB each) and say nothing the summary does not.
  rm -rf "$dir/ckpt"
  return "$rc"
}

device_tests() {  # SECONDS
  local limit=$1 rc=0
  if [ "$dry" = 1 ]; then
    echo "  CUDA_VISIBLE_DEVICES= $bin_dir/tests/mpt_device_tests --gtest_output=json:$work/device/no_gpu.json"
    echo "  MPT_DEVICE_RESULTS=$work/device timeout $limit tests/device/run.sh $bin_dir"
    return 0
  fi
  mkdir -p "$work/device"
  if [ ! -x "$bin_dir/tests/mpt_device_tests" ]; then echo "built without CUDA" >"$work/device/not_built"; return 0; fi
  # The tests that pass with no GPU visible, so that a run where every test needing one skipped
  # is told from a real one.
  (cd "$ROOT" && CUDA_VISIBLE_DEVICES="" timeout 60 "$bin_dir/tests/mpt_device_tests" \
    --gtest_output="json:$work/device/no_gpu.json" >"$work/device/no_gpu.log" 2>&1) || true
  say "device tests (at most $limit s)"
  MPT_DEVICE_RESULTS=$work/device timeout --kill-after=10 "$limit" "$ROOT/tests/device/run.sh" "$bin_dir" \
    >"$work/device/run.log" 2>&1 || rc=$?
  tail -n 1 "$work/device/summary.txt" >&2 2>/dev/null || say "device tests: no summary (status $rc)"
  case $rc in 124|137) say "device tests: stopped at the time limit" ;; esac
  return "$rc"
}

benchmarks() {  # SECONDS
  local limit=$1
  if [ "$dry" = 1 ]; then
    echo "  OUT=$work/bench bench/gpu/run.sh --build-dir $bin_dir --budget $limit"
    return 0
  fi
  mkdir -p "$work/bench"
  if [ "$limit" -lt 60 ]; then say "benchmarks: skipped, $limit s left"; return 1; fi
  say "benchmarks (at most $limit s)"
  OUT=$work/bench timeout --kill-after=10 $((limit + 10)) "$ROOT/bench/gpu/run.sh" --build-dir "$bin_dir" \
    --budget "$limit" >"$work/bench/run.log" 2>&1 || { say "benchmarks: bench/gpu/run.sh failed; see $work/bench/run.log"; return 1; }
}

dry=0
[ "$mode" = dry ] && dry=1
[ -n "$results" ] || results=$(mktemp -d /tmp/mpt_verify.XXXXXX)
mkdir -p "$results"
results=$(cd "$results" && pwd)
# Every stage writes into a work folder; what comes back is gathered from it at the end.
work=$(mktemp -d "${TMPDIR:-/tmp}/mpt_verify_work.XXXXXX")
resolve_libs

# --- --dry-run: the commands and the pack's completeness -------------------------------------------
if [ "$mode" = dry ]; then
  problems=0
  echo "pack: $bin_dir"
  [ -f "$bin_dir/MANIFEST.txt" ] && sed 's/^/  /' "$bin_dir/MANIFEST.txt"
  for b in $BINARIES; do
    if [ -x "$bin_dir/$b" ]; then echo "  present: $b"; else echo "  MISSING: $b"; problems=1; fi
  done
  for b in $BINARIES; do if [ -x "$bin_dir/$b" ]; then ldd "$bin_dir/$b" 2>/dev/null || true; fi; done |
    awk '$2 == "=>" {print $1, $3}' | sort -u >"$work/ldd.txt"
  while read -r lib path; do
    if [ "$path" != "not" ]; then
      echo "  library $lib: $path"
    elif is_machine_lib "$lib"; then
      echo "  library $lib: expected on the GPU machine (CUDA toolkit or the NVIDIA wheels beside PyTorch)"
    else
      echo "  library $lib: MISSING (neither packed nor a library the GPU machine brings)"; problems=1
    fi
  done <"$work/ldd.txt"
  echo "  cuDNN's folder (engine libraries opened at run time): ${cudnn:-not found here; looked for libcudnn.so.9 in /usr/local/cuda and the NVIDIA wheels}"
  "$PYTHON" -c 'import torch, numpy, safetensors' 2>/dev/null && echo "  $PYTHON imports torch, numpy, safetensors" ||
    echo "  $PYTHON lacks torch, numpy or safetensors (the loss check and PyTorch's benchmark need them)"
  echo "commands (budget $budget s):"
  echo "  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader"
  device_tests 150
  loss_check gpu_llama1b_bf16 llama1b bf16_mixed cuda cuda 150
  benchmarks "$((budget - 150 - 150 - 20))"
  echo "  $PYTHON bench/gpu/verify_table.py $work --gpu NAME [--expect-gpu]"
  echo "  then into $results: verify_table.txt verify_summary.json verify.log verify_results.tar.gz device_tests.json parity_*.json gpu_bench.jsonl gpu_bench_table.md"
  rm -rf "$work"
  [ "$problems" = 0 ] || { say "the pack is incomplete"; exit 2; }
  exit 0
fi

[ -z "$unresolved" ] || { say "libraries found nowhere: $unresolved"; exit 2; }
for b in $BINARIES; do
  [ -x "$bin_dir/$b" ] && continue
  # A build without the CUDA toolkit has no device tests; the CPU smoke goes on without them.
  [ "$mode" = smoke ] && [ "$b" = tests/mpt_device_tests ] && { say "no $b in $bin_dir (built without CUDA)"; continue; }
  say "no $b in $bin_dir"
  exit 2
done
# The files that come back (a device call brings at most 8), also when a stage is stopped.
# shellcheck disable=SC2317  # run by the EXIT trap
gather() {
  cp "$work/verify_table.txt" "$work/verify_summary.json" "$results/" 2>/dev/null || true
  cp "$work/device/device_tests.json" "$results/" 2>/dev/null || true
  for f in "$work"/loss/*/parity.json; do
    if [ -f "$f" ]; then cp "$f" "$results/parity_$(basename "$(dirname "$f")").json"; fi
  done
  cp "$work/bench/gpu_bench.jsonl" "$work/bench/gpu_bench_table.md" "$results/" 2>/dev/null || true
  tar -czf "$results/verify_results.tar.gz" -C "$work" . 2>/dev/null || true
  rm -rf "$work"
}
trap gather EXIT
exec > >(tee "$results/verify.log") 2>&1
say "results in $results"
# --- --cpu-smoke -----------------------------------------------------------------------------------
if [ "$mode" = smoke ]; then
  cpu_threads=1
  device_tests 120 || true
  loss_check cpu_llama_tiny_fp32 llama1b fp32 cpu cpu 240 tiny || true
  loss_check cpu_gpt2_tiny_fp32 gpt2_124m fp32 cpu cpu 240 tiny || true
  loss_check cpu_llama_tiny_bf16 llama1b bf16_mixed cpu cpu 240 tiny || true
  if [ "$bench" = 1 ]; then
    mkdir -p "$work/bench"
    say "the benchmark's CPU smoke test"
    OUT=$work/bench "$ROOT/bench/gpu/run.sh" --cpu-smoke --build-dir "$bin_dir" >"$work/bench/run.log" 2>&1 ||
      { say "bench/gpu/run.sh --cpu-smoke failed: $(tail -n 5 "$work/bench/run.log")"; echo 1 >"$work/bench/failed"; }
  fi
  status=0
  "$PYTHON" "$ROOT/bench/gpu/verify_table.py" "$work" --gpu "none (CPU smoke)" || status=$?
  if [ -f "$work/bench/failed" ] && [ "$status" = 0 ]; then status=1; fi
  say "CPU smoke done in $(( $(date +%s) - START )) s (status $status)"
  exit "$status"
fi

# --- on the GPU machine ----------------------------------------------------------------------------
gpu="none"
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  expect_gpu=1
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
fi
echo "== GPU: $gpu; pack: $(sed -n 's/^commit: //p' "$bin_dir/MANIFEST.txt" 2>/dev/null || echo '?'); budget $budget s"
nvidia-smi >"$work/nvidia-smi.txt" 2>&1 || true
env | grep -E '^(LD_LIBRARY_PATH|PYTHON|CUDA_VISIBLE_DEVICES)=' >"$work/environment.txt" || true

# The shares: the device tests up to 150 s, the loss check up to 150 s (the 1B model's two
# checkpoints of 3.4 GB are written and read), both keeping 240 s for the benchmarks (a
# compile per model and size on PyTorch's side); the benchmarks get the rest less 20 s for
# the table and the files.
device_tests "$(min 150 $(( $(left) - 150 - 240 )))" || true
loss_check gpu_llama1b_bf16 llama1b bf16_mixed cuda cuda "$(min 150 $(( $(left) - 240 )))" || true
benchmarks $(( $(left) - 20 )) || true
flags=()
[ "$expect_gpu" = 1 ] && flags+=(--expect-gpu)
status=0
"$PYTHON" "$ROOT/bench/gpu/verify_table.py" "$work" --gpu "$gpu" "${flags[@]}" || status=$?
say "done in $(( $(date +%s) - START )) s (status $status); the files in $results"
exit "$status"

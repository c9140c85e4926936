#!/usr/bin/env bash
# mptrain plan --pipeline: the schedule a recipe implies, its timeline, bubble fraction and
# micro-batches in flight; impossible schedules and bad arguments are refused.
# Usage: plan.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
recipe=$src/recipes/tiny.toml   # 4 layers, micro-batch 4, global batch 16: M = 4 at DP 1
source "$src/tests/cli/lib/common.bash"

# has TEXT: the output holds TEXT as a whole line.
has() { grep -qxF -- "$1" "$tmp/out" || fail "no line '$1' in: $(cat "$tmp/out")"; }
# err_has TEXT: stderr holds TEXT somewhere.
err_has() { grep -qF -- "$1" "$tmp/err" || fail "stderr lacks '$1': $(cat "$tmp/err")"; }

# PP=4, M=4, 1F1B (the default with one chunk per stage): bubble (P-1)/M = 3/4. The
# timeline, worked out by hand: stage r warms up with 3 - r forwards; stage 3 alternates.
run 0 plan --pipeline "$recipe" model.pipeline_model_parallel_size=4
has "schedule: 1f1b, P=4 V=1 M=4"
has "stage 0: F0 F1 F2 F3 .. .. .. B0 .. B1 .. B2 .. B3"
has "stage 1: .. F0 F1 F2 .. .. B0 F3 B1 .. B2 .. B3 .."
has "stage 2: .. .. F0 F1 .. B0 F2 B1 F3 B2 .. B3 .. .."
has "stage 3: .. .. .. F0 B0 F1 B1 F2 B2 F3 B3 .. .. .."
has "bubble fraction: 0.75 (idle 24 / busy 32 time units)"
has "micro-batches in flight (most per chunk): stage 0 4, stage 1 3, stage 2 2, stage 3 1"
has "layout: world 4 = tp 1 x pp 4 x cp 1 x dp 1; 4 micro-batches of 4 per step (global batch 16)"
has "layers (by chunk): stage 0 [0], stage 1 [1], stage 2 [2], stage 3 [3]"

# PP=2, VPP=2 (interleaved by default, G = P = 2): bubble (P-1)/(V*M) = 1/8.
run 0 plan --pipeline "$recipe" model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2
has "schedule: interleaved, P=2 V=2 M=4 G=2"
has "layers (by chunk): stage 0 [0] [2], stage 1 [1] [3]"
has "bubble fraction: 0.125 (idle 4 / busy 32 time units)"
[[ $(grep -c '^stage [01]: ' "$tmp/out") == 2 ]] || fail "expected two stage lines: $(cat "$tmp/out")"
grep -q '^stage 0: F0a F1a F0b F1b ' "$tmp/out" || fail "stage 0 does not open with Megatron's table: $(cat "$tmp/out")"

# The same sizes as 1F1B without chunks, and as GPipe: every micro-batch in flight.
run 0 plan --pipeline "$recipe" model.pipeline_model_parallel_size=4 --schedule gpipe
has "schedule: gpipe, P=4 V=1 M=4"
has "bubble fraction: 0.75 (idle 24 / busy 32 time units)"
has "micro-batches in flight (most per chunk): stage 0 4, stage 1 4, stage 2 4, stage 3 4"

# --dp 2 halves the micro-batches: M = 16 / (4 * 2) = 2, bubble 3/2.
run 0 plan --pipeline --dp 2 "$recipe" model.pipeline_model_parallel_size=4
has "schedule: 1f1b, P=4 V=1 M=2"
has "bubble fraction: 1.5 (idle 24 / busy 16 time units)"

# Megatron's uneven split: 7 layers, 1 on the first of 4 stages, the other 6 split evenly.
run 0 plan --pipeline "$recipe" model.num_layers=7 model.pipeline_model_parallel_size=4 \
  model.num_layers_in_first_pipeline_stage=1
has "layers (by chunk): stage 0 [0], stage 1 [1-2], stage 2 [3-4], stage 3 [5-6]"
run 0 plan --pipeline "$recipe" model.num_layers=6 model.pipeline_model_parallel_size=2 \
  model.num_layers_in_first_pipeline_stage=2
has "layers (by chunk): stage 0 [0-1], stage 1 [2-5]"

# One stage: gradient accumulation, no bubble.
run 0 plan --pipeline "$recipe"
has "schedule: none, P=1 V=1 M=4"
has "stage 0: F0 B0 F1 B1 F2 B2 F3 B3"
has "bubble fraction: 0 (idle 0 / busy 8 time units)"

# Impossible for the sizes: M = 24 / 4 = 6 micro-batches over 4 interleaved stages. A rejected
# recipe exits 1, as `mptrain config` does; the recipe's rules name the key that set M.
run 1 plan --pipeline "$recipe" model.num_layers=8 model.pipeline_model_parallel_size=4 \
  model.virtual_pipeline_model_parallel_size=2 train.global_batch_size=24
err_has "override 'train.global_batch_size=24': train.global_batch_size: gives 6 micro-batches per step"
err_has "divisible by model.pipeline_model_parallel_size (4)"
[[ ! -s $tmp/out ]] || fail "printed a plan for an impossible schedule: $(cat "$tmp/out")"
# The same sizes with one chunk per stage are fine for 1F1B, but --schedule interleaved is not.
run 0 plan --pipeline "$recipe" model.pipeline_model_parallel_size=4 train.global_batch_size=24
has "schedule: 1f1b, P=4 V=1 M=6"
run 1 plan --pipeline "$recipe" model.pipeline_model_parallel_size=4 train.global_batch_size=24 --schedule interleaved
err_has "interleaved pipeline schedule: the number of micro-batches (6) must be divisible by pipeline_model_parallel_size (4)"
[[ ! -s $tmp/out ]] || fail "printed a plan for an impossible schedule: $(cat "$tmp/out")"
# A group size outside [P, M], and several chunks under a schedule that runs one.
run 1 plan --pipeline "$recipe" model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2 \
  model.microbatch_group_size_per_vp_stage=5
err_has "model.microbatch_group_size_per_vp_stage: must lie in [pipeline_model_parallel_size, micro-batches per step] = [2, 4], got 5"
run 1 plan --pipeline "$recipe" model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2 \
  --schedule 1f1b
err_has "1f1b pipeline schedule: the number of model chunks per stage (2) must be 1"
run 1 plan --pipeline "$recipe" model.pipeline_model_parallel_size=2 --schedule none
err_has "none pipeline schedule: pipeline_model_parallel_size (2) must be 1"
# The recipe's own rules: layers over stages, the global batch over micro-batches.
run 1 plan --pipeline "$recipe" model.pipeline_model_parallel_size=3
err_has "model.num_layers: must be divisible by model.pipeline_model_parallel_size (4 % 3 = 1)"
run 1 plan --pipeline --dp 3 "$recipe" model.pipeline_model_parallel_size=2
err_has "train.global_batch_size: must be divisible by train.micro_batch_size * data-parallel size = 4 * 3 = 12, got 16"

# Command-line errors exit 2.
run 2 plan --pipeline "$recipe" --schedule zigzag
err_has "--schedule expects none, gpipe, 1f1b or interleaved, got 'zigzag'"
run 2 plan --pipeline
err_has "plan needs the recipe file (RECIPE.toml)"
run 2 plan --pipeline "$recipe" --dp 0
run 2 plan --pipeline "$recipe" --frobnicate
run 2 plan --pipeline "$recipe" not-an-override
# Options of the cluster plan are not the timeline's, and the other way round.
run 2 plan --pipeline "$recipe" --gpus 4
err_has "--gpus is not an option of 'plan --pipeline'"
run 2 plan "$recipe" --dp 2
err_has "--dp needs --pipeline"

# The help lists the command; `plan --help` prints its part.
run 0 --help
grep -qF "mptrain plan --pipeline RECIPE.toml" "$tmp/out" || fail "--help does not list plan"
run 0 plan --help
grep -qF -- "--schedule NAME" "$tmp/out" || fail "plan --help: $(cat "$tmp/out")"
echo "plan.sh: ok"

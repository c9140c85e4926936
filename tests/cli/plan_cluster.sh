#!/usr/bin/env bash
# mptrain plan RECIPE: memory per stage, bytes per dimension, the estimate; --groups, --search,
# --json; the production recipes plan at their GPU counts; bad requests are refused.
# Usage: plan_cluster.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
tiny=$src/recipes/tiny.toml
source "$src/tests/cli/lib/common.bash"

has() { grep -qxF -- "$1" "$tmp/out" || fail "no line '$1' in: $(cat "$tmp/out")"; }
out_has() { grep -qF -- "$1" "$tmp/out" || fail "output lacks '$1': $(cat "$tmp/out")"; }
err_has() { grep -qF -- "$1" "$tmp/err" || fail "stderr lacks '$1': $(cat "$tmp/err")"; }

# Llama-3 70B at its 64 GPUs: the layout, 70B in bf16 over TP 4 x PP 4 is about 8.75 GB per
# GPU (8.82 GB on average with the embedding and output layer), and it fits in 80 GiB.
run 0 plan "$src/recipes/llama70b.toml" --gpus 64
has "layout: TP 4 x CP 2 x DP 2 x PP 4 = 64 GPUs, sequence parallel"
has "sharding: optim over dp-cp (4 GPUs); precision: bf16 mixed"
has "batch: global 512 = micro-batch 1 x 256 micro-batches x DP 2; sequence 8192 (4096 per CP rank)"
has "parameter share per GPU: 4.54 B (9.08 GB in bf16) on stage 3; mean 4.41 B (8.82 GB)"
has "fits: yes"
grep -qE '^  tp +tp \(4\) +within ' "$tmp/out" || fail "TP is not within a node: $(cat "$tmp/out")"
grep -qE '^  dp +dp-cp \(4\) +across ' "$tmp/out" || fail "DP x CP does not cross nodes: $(cat "$tmp/out")"
grep -qE '^  pp +pp \(4\) +across .*send activations' "$tmp/out" || fail "no PP traffic: $(cat "$tmp/out")"
grep -qE '^  throughput: .* MFU [0-9]+\.[0-9]%$' "$tmp/out" || fail "no MFU: $(cat "$tmp/out")"
# The same on 2 GPUs per node: now TP x CP groups span nodes too.
run 0 plan "$src/recipes/llama70b.toml" --gpus 64 --gpus-per-node 2
grep -qE '^  tp +tp \(4\) +across ' "$tmp/out" || fail "TP 4 over 2-GPU nodes should cross: $(cat "$tmp/out")"
# Less memory per GPU: it no longer fits, and says by how much.
run 0 plan "$src/recipes/llama70b.toml" --gpus 64 --gpu-memory 40
has "fits: no, stage 0 needs 76.43 GiB"

# Every production recipe plans at the GPU count its header states.
for r in llama8b:8 llama70b:64 gpt3_175b:1024 mixtral8x7b:64 mixtral8x22b:256 gpt2_124m:8; do
  run 0 plan "$src/recipes/${r%%:*}.toml" --gpus "${r##*:}"
  has "fits: yes"
done
run 0 plan "$src/recipes/llama405b.toml" --gpus 1024 --gpu-memory 140
has "layout: TP 8 x CP 2 x DP 8 x PP 8 (VPP 2) = 1024 GPUs, sequence parallel"
has "fits: yes"
run 0 plan "$src/recipes/mixtral8x7b.toml" --gpus 64
has "layout: TP 1 x CP 1 x DP 16 x PP 4 = 64 GPUs; experts ETP 1 x EP 8 x EDP 2 x PP 4"
grep -qE '^  ep +etp-ep \(8\) +within .*all-to-all' "$tmp/out" || fail "no EP traffic: $(cat "$tmp/out")"
grep -qE '^  edp +edp \(2\) +across ' "$tmp/out" || fail "no EDP traffic: $(cat "$tmp/out")"

# Without --gpus: the smallest world the layout allows.
run 0 plan "$src/recipes/llama70b.toml"
out_has "on 32 GPUs (the smallest world the layout allows; --gpus N for more)"

# --groups: Megatron's rank layout (TP fastest) and one rank's place in it.
run 0 plan "$tiny" --gpus 8 model.tensor_model_parallel_size=2 model.sequence_parallel=true \
  model.pipeline_model_parallel_size=2 --groups --rank 5
has "groups: world 8 = TP 2 x CP 1 x DP 2 x PP 2; experts: ETP 2 x EP 1 x EDP 2 x PP 2"
has "  tp (4 groups of 2): [0,1] [2,3] [4,5] [6,7]"
has "  dp (4 groups of 2): [0,2] [1,3] [4,6] [5,7]"
has "  pp (4 groups of 2): [0,4] [1,5] [2,6] [3,7]"
has "  tp-pp (model parallel) (2 groups of 4): [0,1,4,5] [2,3,6,7]"
has "  embedding (4 groups of 2): [0,4] [1,5] [2,6] [3,7]"
has "rank 5: tp 1, cp 0, dp 0, pp 1; etp 1, ep 0, edp 0"
has "  position-embedding      (not a member)"
has "  edp                     [5,7]"

# --json: one document with the plan and every group.
run 0 plan "$tiny" --gpus 4 model.context_parallel_size=2 --json
[[ $(wc -l <"$tmp/out") == 1 ]] || fail "--json is not one line: $(head -3 "$tmp/out")"
for key in '"layout":{' '"cp":[[0,1],[2,3]]' '"dp-cp":[[0,1,2,3]]' '"rank":{"coords":' '"fits":true' \
  '"dim":"cp"' '"dim":"dp"' '"activations_bytes":' '"mfu":'; do
  grep -qF -- "$key" "$tmp/out" || fail "--json lacks $key: $(cat "$tmp/out")"
done
if command -v python3 >/dev/null; then
  python3 -c 'import json, sys
d = json.load(sys.stdin)
assert d["layout"]["world"] == 4 and d["layout"]["cp"] == 2 and d["layout"]["dp"] == 2, d["layout"]
assert len(d["stages"]) == 1 and d["stages"][0]["memory"]["total_bytes"] > 0
assert d["groups"]["tp"] == [[0], [1], [2], [3]]' <"$tmp/out" || fail "--json does not parse as expected"
fi

# --search: every layout of 64 GPUs that fits, ranked; the recipe's own among them; why
# families were excluded.
run 0 plan "$src/recipes/llama70b.toml" --gpus 64 --search
grep -qE '^search: 64 GPUs: [0-9]+ layouts considered, [0-9]+ fit; the recipe.s own layout ranks [0-9]+ of [0-9]+$' \
  "$tmp/out" || fail "no search summary: $(head -3 "$tmp/out")"
grep -qE '^ +[0-9]+  TP 4 PP 4 CP 2 DP 2 .*<- the recipe.s$' "$tmp/out" || fail "the recipe's layout is not ranked"
has "  TP 16: tensor parallelism must stay within a node (8 GPUs)"
grep -qE '^  TP 1 PP 1: does not fit: at least .* per GPU' "$tmp/out" || fail "no memory exclusion: $(cat "$tmp/out")"
run 0 plan "$src/recipes/llama70b.toml" --gpus 64 --search --json
grep -qE '"recipe_rank":[1-9]' "$tmp/out" || fail "--search --json: $(head -c 300 "$tmp/out")"

# Options before the command word, as for every command.
run 0 --quiet plan "$tiny"
has "fits: yes"

# Refusals: a world the layout does not divide (exit 1, naming what it needs), bad options
# (exit 2).
run 1 plan "$src/recipes/llama70b.toml" --gpus 8
err_has "the recipe's layout needs at least 32 ranks (a multiple of 32), not 8; launch 32, or lower model.tensor_model_parallel_size (4)"
run 1 plan "$tiny" --rank 3
err_has "plan --rank 3: outside the world of 1 ranks"
run 2 plan "$tiny" --gpus 0
err_has "--gpus expects an integer in 1..1048576, got '0'"
run 2 plan "$tiny" --compute-efficiency 1.5
err_has "--compute-efficiency expects a number > 0 and <= 1, got '1.5'"
run 2 plan "$tiny" --search --groups
err_has "ask one at a time"
run 2 plan "$tiny" --frobnicate
err_has "unknown option '--frobnicate' of 'plan'"
run 2 --nproc-per-node 2 plan "$tiny"
err_has "--nproc-per-node starts ranks for 'train' and 'config', not for 'plan'"
run 2 plan
err_has "plan needs the recipe file (RECIPE.toml)"

# The help lists the options.
run 0 plan --help
for opt in "--gpus N" "--gpu-memory GiB" "--gpus-per-node N" "--search" "--groups" "--json" "--peak-tflops X"; do
  grep -qF -- "$opt" "$tmp/out" || fail "plan --help lacks $opt"
done
echo "plan_cluster.sh: ok"

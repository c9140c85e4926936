#!/usr/bin/env bash
# CUDA graphs from the command line (model.cuda_graph_impl = "local"), on the emulated device,
# which records graphs as a GPU does: the log says when the micro-batch's forward and backward
# were recorded, and the losses equal an eager run's (bit for bit on this backend, with
# dropout), at one rank and at two data-parallel ranks; the plain CPU backend says it records
# none and trains; what graphs cannot hold is refused naming the key.
# Usage: graphs.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"

dropout=(model.hidden_dropout=0.1 model.attention_dropout=0.1)
MPT_BACKEND=cpu-device train_fixture eager 1 "${dropout[@]}"
MPT_BACKEND=cpu-device train_fixture graphs 1 "${dropout[@]}" model.cuda_graph_impl=local \
  model.cuda_graph_warmup_steps=2
for pass in forward backward; do
  grep -q "CUDA graph of a micro-batch's $pass recorded at iteration 3: [1-9][0-9]* nodes" "$tmp/graphs.out" ||
    fail "no $pass graph recorded at iteration 3: $(grep -i graph "$tmp/graphs.out")"
done
metric "$tmp/eager.jsonl" >"$tmp/want"
metric "$tmp/graphs.jsonl" >"$tmp/got"
[[ $(wc -l <"$tmp/want") == 6 ]] || fail "eager: $(wc -l <"$tmp/want") losses, expected 6"
cmp -s "$tmp/want" "$tmp/got" || fail "replayed steps differ from eager ones: $(paste "$tmp/want" "$tmp/got")"

MPT_BACKEND=cpu train_fixture host 1 model.cuda_graph_impl=local
grep -q "records no graphs; training without them" "$tmp/host.out" ||
  fail "the cpu backend did not say it records no graphs: $(head -5 "$tmp/host.out")"

run 1 "$fixture" model.cuda_graph_impl=local model.num_moe_experts=4 model.moe_ffn_hidden_size=64
grep -q "model.num_moe_experts" "$tmp/err" || fail "MoE with graphs: $(cat "$tmp/err")"
run 1 "$fixture" model.cuda_graph_impl=transformer_engine
grep -q 'use "local"' "$tmp/err" || fail "transformer_engine: $(cat "$tmp/err")"
run 1 --nproc-per-node 2 "$fixture" model.cuda_graph_impl=local model.tensor_model_parallel_size=2
grep -q "model.tensor_model_parallel_size" "$tmp/err" || fail "TP=2 with graphs: $(cat "$tmp/err")"

# Two data-parallel ranks: all but each step's last backward replayed, the losses as eager.
MPT_BACKEND=cpu-device train_fixture dp_eager 2 "${dropout[@]}" ddp.overlap_grad_reduce=true
MPT_BACKEND=cpu-device train_fixture dp_graphs 2 "${dropout[@]}" ddp.overlap_grad_reduce=true \
  model.cuda_graph_impl=local model.cuda_graph_warmup_steps=2
grep -q "CUDA graph of a micro-batch's backward recorded at iteration 3" "$tmp/dp_graphs.out" ||
  fail "DP=2: no backward graph recorded: $(grep -i graph "$tmp/dp_graphs.out")"
metric "$tmp/dp_eager.jsonl" >"$tmp/want"
metric "$tmp/dp_graphs.jsonl" >"$tmp/got"
cmp -s "$tmp/want" "$tmp/got" || fail "DP=2: replayed steps differ from eager ones: $(paste "$tmp/want" "$tmp/got")"
echo "graphs.sh: ok"

#!/usr/bin/env bash
# Two hosts on one machine: two network namespaces joined by a veth pair, each with its own
# address, each launching 2 ranks with torchrun-style variables pointing at the first
# host. The 4-rank job trains and matches the one-rank losses. Skips (exit 77) only where
# namespaces cannot be created (no root, no iproute2, no CAP_NET_ADMIN).
# Usage: two_nodes.sh MPTRAIN SOURCE_DIR
set -u
mptrain=$1
src=$2
fixture=$src/tests/data/cli_tiny.toml
source "$src/tests/cli/lib/common.bash"
tag="mpt$$"
ns0="${tag}a" ns1="${tag}b"
pids=()
on_exit() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  ip netns del "$ns0" 2>/dev/null
  ip netns del "$ns1" 2>/dev/null
}

if ! command -v ip >/dev/null || ! ip netns add "$ns0" 2>/dev/null; then
  echo "two_nodes.sh: skipped: network namespaces cannot be created here"
  exit 77
fi
ip netns add "$ns1" || fail "second namespace"
ip link add "${tag}0" type veth peer name "${tag}1" || fail "veth pair"
ip link set "${tag}0" netns "$ns0" && ip link set "${tag}1" netns "$ns1" || fail "moving the veth ends"
ip -n "$ns0" addr add 10.213.0.1/24 dev "${tag}0" && ip -n "$ns1" addr add 10.213.0.2/24 dev "${tag}1" || fail "addresses"
ip -n "$ns0" link set lo up && ip -n "$ns1" link set lo up || fail "loopback up"
ip -n "$ns0" link set "${tag}0" up && ip -n "$ns1" link set "${tag}1" up || fail "links up"

common=("$fixture" train.global_batch_size=8 train.train_iters=4 logger.log_interval=1)
"$mptrain" --threads 1 "${common[@]}" logger.metrics_file="$tmp/one.jsonl" >"$tmp/one.out" 2>&1 ||
  fail "one rank exited $?: $(cat "$tmp/one.out")"

# Host 0 (10.213.0.1) runs ranks 0 and 1 and the rendezvous store; host 1 runs ranks 2 and 3.
for r in 0 1 2 3; do
  ns=$ns0
  (( r >= 2 )) && ns=$ns1
  ip netns exec "$ns" env RANK=$r WORLD_SIZE=4 LOCAL_RANK=$(( r % 2 )) LOCAL_WORLD_SIZE=2 GROUP_RANK=$(( r / 2 )) \
    MASTER_ADDR=10.213.0.1 MASTER_PORT=29533 "$mptrain" --threads 1 "${common[@]}" dist.distributed_timeout_minutes=1 \
    logger.metrics_file="$tmp/four.jsonl" >"$tmp/rank$r.out" 2>&1 &
  pids+=($!)
done
for r in 0 1 2 3; do
  wait "${pids[$r]}" || fail "rank $r exited $?: $(cat "$tmp/rank$r.out")"
done
losses() { grep -oE '"lm_loss":[^,}]+' "$1" | cut -d: -f2; }
paste <(losses "$tmp/one.jsonl") <(losses "$tmp/four.jsonl") >"$tmp/pairs"
[[ $(wc -l <"$tmp/pairs") == 4 ]] || fail "expected 4 steps each: $(cat "$tmp/pairs")"
awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }' \
  "$tmp/pairs" || fail "the two-host run differs from one rank: $(cat "$tmp/pairs")"
echo "two_nodes.sh: ok"

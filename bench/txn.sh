#!/usr/bin/env bash
# The transactional workloads (docs/transactions.md): kvs-bench --workload txn-transfer and
# txn-ycsb at 1, 16 and 64 clients, single-shard and cross-shard, on one node (2 shards) and on
# a 3-node cluster (2 shards, clients spread over the nodes). One line per run (commits/s,
# abort rate, latency). Usage: bench/txn.sh [SECONDS per run, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q --bin kvsd --bin kvs-bench
work=$(mktemp -d /tmp/kvs-txn-bench.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 300); do target/release/kvs-bench --addr "$1" --workload ycsb-c --records 1 --ops 1 --clients 1 >/dev/null 2>&1 && return; sleep 0.1; done; echo "no server at $1"; exit 1; }
runs() { # ADDR LABEL
  for workload in txn-transfer txn-ycsb; do
    local loaded=""
    for span in single-shard cross-shard; do
      for clients in 1 16 64; do
        printf '%s: ' "$2"
        # A run whose transactions failed (lock timeouts) still prints its line.
        target/release/kvs-bench --addr "$1" --workload $workload --txn-span $span --clients $clients \
          --records 10000 --duration "$secs" $loaded 2>&1 | grep -v '^loaded' | head -2 || true
        loaded="--no-load"
      done
    done
  done
}
one=$(port)
target/release/kvsd --data-dir "$work/one" --shards 2 --listen 127.0.0.1:$one --log-level error & pids+=($!)
wait_for 127.0.0.1:$one
runs 127.0.0.1:$one "1 node"
kill "${pids[@]}"; wait 2>/dev/null || true; pids=()
ports=($(port) $(port) $(port)); peers=($(port) $(port) $(port))
members="1=127.0.0.1:${peers[0]},2=127.0.0.1:${peers[1]},3=127.0.0.1:${peers[2]}"
for i in 0 1 2; do
  target/release/kvsd --node-id $((i + 1)) --data-dir "$work/n$i" --shards 2 --listen 127.0.0.1:${ports[$i]} \
    --peer-listen 127.0.0.1:${peers[$i]} --initial-cluster "$members" --log-level error & pids+=($!)
done
for p in "${ports[@]}"; do wait_for 127.0.0.1:$p; done
sleep 3 # the preferred leaders take over
runs "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}" "3 nodes"

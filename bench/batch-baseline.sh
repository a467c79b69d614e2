#!/usr/bin/env bash
# Baseline: pipelined PUT and GET throughput of `kvs` batch mode against one kvsd.
# Usage: bench/batch-baseline.sh [RECORDS] [SHARDS]   (defaults: 1000000 1)
# kvsd runs pinned to core 0, the client pinned to core 1 (on a 2-core machine they then
# never share a core). Values are 100 bytes. Prints one line per phase.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
shards=${2:-1}
cargo build --release -q --bin kvsd --bin kvs
bin=target/release
work=$(mktemp -d /tmp/kvs-baseline.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server_cpus=0; client_cpus=1
if ((shards > 1)); then server_cpus=0-$(($(nproc) - 1)); client_cpus=$server_cpus; fi
taskset -c "$server_cpus" "$bin/kvsd" --data-dir "$work/data" --listen "127.0.0.1:$port" --shards "$shards" \
  --log-level warn &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do "$bin/kvs" --addr "127.0.0.1:$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
value=$(printf 'v%.0s' $(seq 100))
awk -v n="$records" -v v="$value" 'BEGIN { for (i = 0; i < n; i++) printf "put key-%09d %s\n", i, v }' >"$work/puts"
awk -v n="$records" 'BEGIN { for (i = 0; i < n; i++) printf "get key-%09d\n", i }' >"$work/gets"
run() { # run NAME FILE
  local start end ok
  start=$(date +%s.%N)
  taskset -c "$client_cpus" "$bin/kvs" --addr "127.0.0.1:$port" <"$2" >"$work/out"
  end=$(date +%s.%N)
  ok=$(grep -vc '^ERR' "$work/out" || true)
  awk -v name="$1" -v n="$records" -v ok="$ok" -v s="$start" -v e="$end" \
    'BEGIN { printf "%s: %d commands (%d answered without error) in %.2f s = %.0f ops/s\n", name, n, ok, e - s, n / (e - s) }'
}
run "put (batch mode)" "$work/puts"
run "get (batch mode)" "$work/gets"
"$bin/kvs" --addr "127.0.0.1:$port" info | python3 -c '
import json, sys
for s in json.load(sys.stdin)["shard"]:
    groups = max(1, s["log_groups_written"])
    print("shard %d: %d writes in %d commit groups (%.0f writes per fdatasync)"
          % (s["shard"], s["writes_applied"], groups, s["writes_applied"] / groups))'

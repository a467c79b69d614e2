#!/usr/bin/env bash
# The cost of snapshot reads (ADR 0023): two kvsd builds, BASE and NEW, each with two shards,
# run in turn against the same kvs-bench workloads that read several shards per request
# (SCAN; YCSB-E's short scans with inserts; MGET-free). Usage:
#   bench/snapshot-ab.sh BASE_KVSD NEW_KVSD [KVS_BENCH]
# prints "base|new WORKLOAD" and kvs-bench's summary for each (docs/benchmarks.md).
set -u
BASE=${1:?base kvsd binary}; NEW=${2:?new kvsd binary}
BENCH=${3:-target/release/kvs-bench}
S=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf $S' EXIT
run() { # NAME BIN
  rm -rf $S/d; "$2" --shards 2 --data-dir $S/d --listen 127.0.0.1:7911 >/dev/null 2>&1 & local pid=$!
  sleep 1.5
  for w in scan ycsb-e; do
    echo "$1 $w"
    local load=--no-load; [ $w = scan ] && load=
    $BENCH --addr 127.0.0.1:7911 --records 100000 $load --workload $w --clients 16 --duration 10 2>&1 | grep -E "^throughput|^scan|^insert|^read" | head -4
  done
  kill -9 $pid; wait $pid 2>/dev/null
}
for round in 1 2; do run base "$BASE"; run new "$NEW"; done

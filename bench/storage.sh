#!/usr/bin/env bash
# The paged store's benchmarks: restart time after a checkpoint (SIGTERM) and after kill -9
# at two database sizes, and random point reads on a store far larger than the cache.
# Usage: bench/storage.sh [SMALL] [LARGE] [CACHE]   (defaults: 100000 1000000 64MiB)
# One shard, kvsd pinned to core 0 and the clients to core 1; 1 KiB values.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-100000}
large=${2:-1000000}
cache=${3:-64MiB}
cargo build --release -q --bin kvsd --bin kvs --bin kvs-bench
bin=target/release
work=$(mktemp -d /tmp/kvs-storage.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server=
trap '[[ -n $server ]] && kill -9 $server 2>/dev/null; [[ -n ${KEEP:-} ]] || rm -rf "$work"' EXIT

elapsed=
start() { # start: runs kvsd and waits until it answers; sets $elapsed to the seconds taken
  local t0 t1 before
  before=$(grep -c 'kvsd is ready' "$work/kvsd.log" 2>/dev/null || true)
  t0=$(date +%s.%N)
  taskset -c 0 "$bin/kvsd" --data-dir "$work/data" --listen "127.0.0.1:$port" --shards 1 \
    --cache-size "$cache" --log-level info >/dev/null 2>>"$work/kvsd.log" &
  server=$!
  # Ready means this kvsd said so: right after a kill -9 the old process's socket can
  # linger for a moment (its io_uring is torn down asynchronously).
  until (($(grep -c 'kvsd is ready' "$work/kvsd.log" 2>/dev/null || true) > ${before:-0})); do
    kill -0 $server 2>/dev/null || { echo "kvsd exited during start-up:"; tail -3 "$work/kvsd.log"; exit 1; }
    sleep 0.01
  done
  "$bin/kvs" --addr "127.0.0.1:$port" ping >/dev/null
  t1=$(date +%s.%N)
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}
stop_term() { kill -TERM $server; wait $server || true; server=; }
stop_kill() { kill -9 $server; wait $server 2>/dev/null || true; server=; }
load() { # load FROM TO: puts keys [FROM, TO) with 1 KiB values, in random order
  python3 - "$1" "$2" >"$work/puts" <<'PY'
import random, sys
a, b = int(sys.argv[1]), int(sys.argv[2])
keys = list(range(a, b)); random.Random(a).shuffle(keys)
for i in keys:
    print(f"put user{i:012d} {('%016x' % i) * 64}")
PY
  local t0 t1
  t0=$(date +%s.%N)
  taskset -c 1 "$bin/kvs" --addr "127.0.0.1:$port" <"$work/puts" | grep -vc '^OK$' >"$work/notok" || true
  t1=$(date +%s.%N)
  [[ $(cat "$work/notok") == 0 ]] || { echo "load: $(cat "$work/notok") puts failed"; exit 1; }
  awk -v n=$(($2 - $1)) -v a="$t0" -v b="$t1" 'BEGIN { printf "%d puts in %.1f s (%.0f/s)", n, b - a, n / (b - a) }'
}
size() { du -sm "$work/data" | cut -f1; }
restarts() { # restarts N: SIGTERM and kill -9 restart times with N records loaded
  stop_term
  start
  local term=$elapsed
  # Writes after the last checkpoint, then kill -9: the restart replays them.
  load "$1" $(($1 + 20000)) >/dev/null
  stop_kill
  start
  local killed=$elapsed
  echo "| $1 | $(size) MiB | $term s | $killed s |"
}

echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
echo "cache: $cache, 1 shard, 1 KiB values"
start
echo "load $small: $(load 0 "$small")"
echo
echo "| records | data on disk | restart after SIGTERM | restart after kill -9 (20K puts to replay) |"
echo "|---|---|---|---|"
restarts "$small"
echo "load to $large: $(load $((small + 20000)) "$large")" >&2
restarts "$large"
echo
echo "random point reads over $large records (store $(size) MiB, cache $cache):"
taskset -c 1 "$bin/kvs-bench" --addr "127.0.0.1:$port" --workload random-read --no-load \
  --records "$large" --value-size 1024 --clients 50 --duration 20 --json "$work/reads.json" \
  >"$work/reads.txt"
python3 - "$work/reads.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us_all"]
print("random reads: %.0f ops/s, p50 %d us, p99 %d us, p999 %d us, %d errors"
      % (r["throughput_ops_per_sec"], lat["p50"], lat["p99"], lat["p999"], r["errors"]))
PY
"$bin/kvs" --addr "127.0.0.1:$port" info | python3 -c '
import json, sys
for s in json.load(sys.stdin)["shard"]:
    print("shard %d: %d keys, %d pages in the file, cache %d/%d pages, %d page reads, %d evictions, tree height %d, %d checkpoints"
          % (s["shard"], s["keys"], s["page_file_pages"], s["cache_pages"], s["cache_capacity_pages"],
             s["page_reads"], s["evictions"], s["tree_height"], s["checkpoints"]))'

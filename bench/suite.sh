#!/usr/bin/env bash
# The benchmark suite: sequential and random reads and writes, 1 to 1000 clients, values of
# 1 to 64 KiB, YCSB A-F, and kvs against Redis (appendfsync always) side by side with the
# same client. Writes JSON results, SVG plots, the machine's description and summary.md
# into docs/benchmarks/latest/ (or the directory given).
#
# Usage: bench/suite.sh [OUT_DIR] [SECONDS_PER_RUN]   (defaults: docs/benchmarks/latest 5)
# Needs: the Rust toolchain; installs redis-server/redis-tools for the comparison if missing.
# Servers run pinned to core 0 and the client to core 1 (taskset), as in the issue's setup.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/benchmarks/latest}
secs=${2:-5}
mkdir -p "$out"
cargo build --release -q --bin kvsd --bin kvs-bench
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  (apt-get install -y -q redis-server redis-tools >/dev/null 2>&1) ||
    { apt-get update -q >/dev/null && apt-get install -y -q redis-server redis-tools >/dev/null; }
fi
bin=target/release
work=$(mktemp -d /tmp/kvs-suite.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0; sleep 0.1; done; return 1; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
  echo "memory: $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "kernel: $(uname -r)"
  echo "disk: $(df -T "$work" | awk 'NR==2{print $2" on "$1}')"
  echo "kvs: $(git rev-parse --short HEAD)"
  echo "redis: $(redis-server --version | awk '{print $3}')"
} >"$out/machine.txt"

start_kvsd() { # start_kvsd NAME [ARGS...] -> sets KPORT, RPORT
  KPORT=$(free_port); RPORT=$(free_port)
  taskset -c 0 "$bin/kvsd" --shards 1 --data-dir "$work/$1" --listen "127.0.0.1:$KPORT" \
    --resp-listen "127.0.0.1:$RPORT" --log-level warn "${@:2}" &
  pids+=($!)
  wait_port "$KPORT"
}
bench() { # bench NAME PORT ARGS...
  local name=$1 port=$2; shift 2
  taskset -c 1 "$bin/kvs-bench" --addr "127.0.0.1:$port" --json "$out/$name.json" --plot "$out/$name.svg" "$@" \
    >"$out/$name.txt" 2>&1 || { tail -3 "$out/$name.txt"; exit 1; }
  echo "$name: $(grep '^throughput' "$out/$name.txt")"
}

start_kvsd main
p=$KPORT
bench seq-write $p --workload write --records 200000 --clients 16 --duration "$secs" --no-load
bench seq-read $p --workload read --records 200000 --clients 16 --duration "$secs" --no-load
bench random-read $p --workload random-read --records 200000 --clients 16 --duration "$secs" --no-load
for c in 1 10 100 1000; do
  bench "clients-$c" $p --workload random-read --records 200000 --clients $c --duration "$secs" --no-load
done
for kib in 1 4 16 64; do
  bench "value-${kib}k" $p --workload ycsb-a --records 2000 --value-size $((kib * 1024)) --clients 16 --duration "$secs"
done
for w in a b c d e f; do
  bench "ycsb-$w" $p --workload ycsb-$w --records 100000 --clients 16 --duration "$secs" $([[ $w == a ]] || echo --no-load)
done

# Side by side: the same client (kvs-bench over RESP, and redis-benchmark) against Redis with
# appendfsync always and against kvsd's RESP listener, then kvsd's native protocol.
rport=$(free_port)
mkdir -p "$work/redis"
taskset -c 0 redis-server --port "$rport" --dir "$work/redis" --appendonly yes --appendfsync always --save "" \
  >/dev/null 2>&1 &
pids+=($!)
wait_port "$rport"
for pipeline in 1 16; do
  for target in redis:$rport kvs-resp:$RPORT; do
    name=${target%%:*} port=${target##*:}
    bench "vs-$name-write-p$pipeline" "$port" --protocol resp --workload write --records 100000 --clients 50 \
      --pipeline $pipeline --duration "$secs" --no-load
    bench "vs-$name-read-p$pipeline" "$port" --protocol resp --workload random-read --records 100000 --clients 50 \
      --pipeline $pipeline --duration "$secs" --no-load
  done
  bench "vs-kvs-native-write-p$pipeline" "$KPORT" --workload write --records 100000 --clients 50 --pipeline $pipeline \
    --duration "$secs" --no-load
  bench "vs-kvs-native-read-p$pipeline" "$KPORT" --workload random-read --records 100000 --clients 50 \
    --pipeline $pipeline --duration "$secs" --no-load
done
for pipeline in 1 16; do
  for target in redis:$rport kvs-resp:$RPORT; do
    name=${target%%:*} port=${target##*:}
    taskset -c 1 redis-benchmark -p "$port" -t set,get -n $((pipeline > 1 ? 1000000 : 200000)) -c 50 -P $pipeline -d 100 \
      -r 100000 --csv 2>/dev/null >"$out/redis-benchmark-$name-p$pipeline.csv"
  done
done

python3 - "$out" <<'PY'
import csv, glob, json, os, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    r = json.load(open(path))
    name = os.path.basename(path)[:-5]
    lat = r["latency_us_all"]
    rows.append(f"| {name} | {r['settings']['clients']} | {r['settings']['pipeline']} | {r['settings']['value_size']} | "
                f"{r['throughput_ops_per_sec']:,.0f} | {lat['p50']} | {lat['p99']} | {lat['p999']} | {r['errors']} |")
lines = ["# Benchmark suite results", "", "```", open(os.path.join(out, "machine.txt")).read().strip(), "```", "",
         "Produced by `bench/suite.sh`. Each run has a `.json` (full results), `.svg` (plot) and `.txt` (table).", "",
         "| run | clients | pipeline | value bytes | ops/s | p50 µs | p99 µs | p999 µs | errors |",
         "|---|---|---|---|---|---|---|---|---|"] + rows
lines += ["", "## redis-benchmark -c 50 -d 100 -r 100000 (requests per second)", "",
          "| server | pipeline | SET | GET |", "|---|---|---|---|"]
for path in sorted(glob.glob(os.path.join(out, "redis-benchmark-*.csv"))):
    name = os.path.basename(path)[len("redis-benchmark-"):-4]
    server, pipeline = name.rsplit("-p", 1)
    rps = {r[0]: r[1] for r in csv.reader(open(path)) if r and r[0] in ("SET", "GET")}
    lines.append(f"| {server} | {pipeline} | {float(rps.get('SET', 0)):,.0f} | {float(rps.get('GET', 0)):,.0f} |")
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

#!/usr/bin/env bash
# kvsd against Redis with the same durability, per core, with Redis's own client: the method
# behind the vs-redis tables in docs/benchmarks.md, kept in the repo so every figure there can
# be reproduced.
#
# redis-server (appendonly yes, appendfsync always) and kvsd (--shards 1, RESP listener) are
# pinned to core 0; redis-benchmark runs on core 1 (-c 50 -d 100 -r 100000), SET and GET,
# unpipelined and at pipeline 16. Rounds alternate the servers, so drift hits both alike;
# the table shows each server's requests/s, p99 and CPU time per operation (from /proc, user
# plus system), and the median of the per-round kvs/Redis throughput ratios.
#
# usage: bench/vs-redis.sh [ROUNDS]      (default 3; needs redis-server and redis-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
  apt-get install -y -q redis-server redis-tools >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q redis-server redis-tools >/dev/null; }
}
cargo build --release -q --bin kvsd
work=$(mktemp -d /tmp/kvs-vs-redis.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(port); kport=$(port); nport=$(port)
mkdir -p "$work/redis"
taskset -c 0 redis-server --port "$rport" --dir "$work/redis" --appendonly yes --appendfsync always \
  --save "" >/dev/null 2>&1 &
rpid=$!
taskset -c 0 target/release/kvsd --shards 1 --data-dir "$work/kvs" --listen "127.0.0.1:$nport" \
  --resp-listen "127.0.0.1:$kport" --log-level warn >/dev/null 2>&1 &
kpid=$!
trap 'kill -9 $rpid $kpid 2>/dev/null; rm -rf "$work"' EXIT
for p in $rport $kport; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# measure PORT PID TEST PIPELINE -> "rps p99_ms cpu_us_per_op"
measure() {
  local n=300000
  (($4 > 1)) && n=2000000
  local t0 t1 out
  t0=$(ticks "$2")
  out=$(taskset -c 1 redis-benchmark -p "$1" -t "$3" -n $n -c 50 -P "$4" -d 100 -r 100000 --csv 2>/dev/null)
  t1=$(ticks "$2")
  printf '%s\n' "$out" | python3 -c "
import csv, os, sys
rows = [r for r in csv.reader(sys.stdin) if r and r[0] == '${3^^}']
hz = os.sysconf('SC_CLK_TCK')
print(rows[0][1], rows[0][6], ($t1 - $t0) / hz * 1e6 / $n)"
}
measure "$rport" $rpid set 1 >/dev/null  # fill both key spaces first
measure "$kport" $kpid set 1 >/dev/null
results=$work/results
: >"$results"
for round in $(seq "$rounds"); do
  for p in 1 16; do
    for t in set get; do
      echo "$round $t $p redis $(measure "$rport" $rpid $t $p)" >>"$results"
      echo "$round $t $p kvs $(measure "$kport" $kpid $t $p)" >>"$results"
    done
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("| test | pipeline | Redis req/s | kvs req/s | kvs/Redis (median of rounds) | Redis CPU us/op | kvs CPU us/op | Redis p99 ms | kvs p99 ms |")
print("|---|---|---|---|---|---|---|---|---|")
for t in ("set", "get"):
    for p in ("1", "16"):
        r = [x for x in rows if x[1] == t and x[2] == p and x[3] == "redis"]
        k = [x for x in rows if x[1] == t and x[2] == p and x[3] == "kvs"]
        ratio = statistics.median(float(b[4]) / float(a[4]) for a, b in zip(r, k))
        med = lambda xs, i: statistics.median(float(x[i]) for x in xs)
        print(f"| {t.upper()} | {p} | {med(r, 4):,.0f} | {med(k, 4):,.0f} | {ratio:.2f} | "
              f"{med(r, 6):.1f} | {med(k, 6):.1f} | {med(r, 5):.3f} | {med(k, 5):.3f} |")
PY

#!/usr/bin/env bash
# A/B of two kvsd builds, BASE and NEW (the new one with --metrics-listen, scraped every
# second), both pinned to core 0, redis-benchmark on core 1, rounds interleaved. Usage:
#   bench/ab-kvsd.sh BASE_KVSD NEW_KVSD
# prints "base|new PIPELINE TEST ops/s server-cpu-us-per-op" lines (docs/benchmarks.md).
set -u
BASE=${1:?base kvsd binary}; NEW=${2:?new kvsd binary}
S=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf $S' EXIT
taskset -c 0 $BASE --shards 1 --data-dir $S/a --listen 127.0.0.1:7901 --resp-listen 127.0.0.1:7902 >/dev/null 2>&1 & A=$!
taskset -c 0 $NEW --shards 1 --data-dir $S/b --listen 127.0.0.1:7903 --resp-listen 127.0.0.1:7904 --metrics-listen 127.0.0.1:7905 >/dev/null 2>&1 & B=$!
sleep 2
(while sleep 1; do curl -s 127.0.0.1:7905/metrics >/dev/null; done) &
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
one() { # PORT PID TEST P
  local n=300000; (($4 > 1)) && n=2000000
  local t0=$(cpu $2)
  local out=$(taskset -c 1 redis-benchmark -p $1 -t $3 -n $n -c 50 -P $4 -d 100 -r 100000 --csv 2>/dev/null)
  local t1=$(cpu $2)
  printf '%s\n' "$out" | python3 -c "
import sys,csv,os
rows=[r for r in csv.reader(sys.stdin) if r and r[0]=='${3^^}']
print(rows[0][1], ($t1-$t0)/os.sysconf('SC_CLK_TCK')*1e6/$n)"
}
one 7902 $A set 1 >/dev/null; one 7904 $B set 1 >/dev/null
for r in 1 2 3; do for p in 1 16; do for t in set get; do
  echo "base $p $t $(one 7902 $A $t $p)"; echo "new $p $t $(one 7904 $B $t $p)"
done; done; done

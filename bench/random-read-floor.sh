#!/usr/bin/env bash
# Cold random GETs in proportion: kvsd, the floor server (`kvs-read-floor`: protocol and one
# O_DIRECT page read per GET, nothing else) and fio, in one run, under the method of
# ../shared/check/random-read-vs-device: the server on core 0, kvs-bench on core 1 with 50
# connections and one request each in flight, 1,000,000 keys of 1 KiB behind a 64 MiB cache;
# fio reads 4 KiB at random with O_DIRECT through io_uring at queue depth 50 on core 0.
#
# Each line: requests (or IOPS) per second, the server's CPU per request (user + system, from
# /proc), the disk's mean read latency and reads in flight (from /proc/diskstats) over the run.
#
# usage: bench/random-read-floor.sh [DATA_DIR] [SECONDS]
#   DATA_DIR (default /tmp/kvs-random-read) keeps the loaded store between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-/tmp/kvs-random-read}
secs=${2:-15}
command -v fio >/dev/null || apt-get install -y -q fio >/dev/null
cargo build --release -q --bin kvsd --bin kvs-bench --bin kvs-read-floor
bin=target/release
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 300); do
    python3 -c "import socket,sys; sys.exit(socket.socket().connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.1
  done
  return 1
}
pids=()
trap 'kill -9 "${pids[@]}" 2>/dev/null || true' EXIT
if [ ! -d "$data/kvs" ]; then
  p=$(port)
  $bin/kvsd --data-dir "$data/kvs" --listen "127.0.0.1:$p" --shards 1 --cache-size 64MiB \
    --log-level warn >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$p"
  $bin/kvs-bench --addr "127.0.0.1:$p" --workload write --records 1000000 --value-size 1024 \
    --clients 16 --pipeline 8 --ops 1 >/dev/null
  kill "${pids[-1]}"
  wait "${pids[-1]}" 2>/dev/null || true
fi
[ -f "$data/pages.dat" ] || fio --name=fill --filename="$data/pages.dat" --size=2G --rw=write \
  --bs=1M --direct=1 >/dev/null
dev=$(lsblk -no PKNAME "$(df --output=source "$data" | tail -1)" 2>/dev/null || true)
[ -n "$dev" ] || dev=$(basename "$(df --output=source "$data" | tail -1)")
disk() { awk -v d="$dev" '$3 == d {print $4, $7}' /proc/diskstats; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME COMMAND...: serve on core 0, drive it from core 1, print one line.
run() {
  local name=$1 p
  shift
  p=$(port)
  taskset -c 0 "$@" --listen "127.0.0.1:$p" >/dev/null 2>&1 &
  local pid=$!
  pids+=($pid)
  wait_port "$p"
  local d0 t0 d1 t1
  d0=$(disk)
  t0=$(ticks $pid)
  taskset -c 1 $bin/kvs-bench --addr "127.0.0.1:$p" --workload random-read --no-load \
    --records 1000000 --value-size 1024 --clients 50 --duration "$secs" \
    --json "$data/run.json" >/dev/null
  d1=$(disk)
  t1=$(ticks $pid)
  kill -9 $pid
  wait $pid 2>/dev/null || true
  python3 - "$name" "$data/run.json" "$d0" "$d1" "$t0" "$t1" "$secs" <<'PY'
import json, os, sys
name, path, d0, d1, t0, t1, secs = sys.argv[1:]
r = json.load(open(path))
ops = r["throughput_ops_per_sec"]
(reads0, ms0), (reads1, ms1) = map(int, d0.split()), map(int, d1.split())
reads, ms, secs = reads1 - reads0, ms1 - ms0, float(secs)
cpu = (float(t1) - float(t0)) / os.sysconf("SC_CLK_TCK")
print(f"{name:34} {ops:9,.0f}/s  cpu {cpu / (ops * secs) * 1e6:5.1f} us/op ({cpu / secs:4.0%})"
      f"  disk {ms * 1000 / max(reads, 1):4.0f} us, {ms / 1000 / secs:4.1f} in flight"
      f"  p99 {r['latency_us']['read']['p99']} us  errors {r.get('errors', 0)}")
PY
}

run "kvsd" $bin/kvsd --data-dir "$data/kvs" --shards 1 --cache-size 64MiB --log-level warn
run "floor, one enter per round" $bin/kvs-read-floor --file "$data/pages.dat" --submit round
run "floor, reads entered at once" $bin/kvs-read-floor --file "$data/pages.dat" --submit eager
run "floor, at once + 200 us polling" $bin/kvs-read-floor --file "$data/pages.dat" --submit eager \
  --poll-us 200
taskset -c 0 fio --name=rr --filename="$data/pages.dat" --size=2G --rw=randread --bs=4k \
  --direct=1 --ioengine=io_uring --iodepth=50 --runtime="$secs" --time_based \
  --output-format=json >"$data/fio.json"
python3 - "$data/fio.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100
iops = j["read"]["iops"]
print(f"{'fio, queue depth 50':34} {iops:9,.0f}/s  cpu {cpu / iops * 1e6:5.1f} us/op ({cpu:4.0%})"
      f"  disk {j['read']['lat_ns']['mean'] / 1000:4.0f} us")
PY

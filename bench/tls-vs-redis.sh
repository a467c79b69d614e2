#!/usr/bin/env bash
# What TLS costs (issue 16, docs/benchmarks.md): the four vs-redis figures (SET and GET at
# pipeline 1 and 16, redis-benchmark -c 50 -d 100) over TLS, side by side with Redis over
# TLS on the same machine and with kvsd in plaintext, in one run. Servers on core 0,
# redis-benchmark on core 1; rounds interleaved; medians of 3.
#
#   bench/tls-vs-redis.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
command -v redis-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
cargo build --release -q --bin kvsd
work=$(mktemp -d /tmp/kvs-tls-bench.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -out "$work/server.pem" -days 2 -extfile "$work/ext" 2>/dev/null

redis_tls=$(free_port); kvs_tls=$(free_port); kvs_plain=$(free_port)
mkdir -p "$work/redis"
taskset -c 0 redis-server --port 0 --tls-port "$redis_tls" --tls-cert-file "$work/server.pem" \
  --tls-key-file "$work/server.key" --tls-ca-cert-file "$work/ca.pem" --tls-auth-clients no \
  --dir "$work/redis" --appendonly yes --appendfsync always --save "" >/dev/null 2>&1 &
pids+=($!)
taskset -c 0 target/release/kvsd --shards 1 --data-dir "$work/kvs-tls" --listen "127.0.0.1:$(free_port)" \
  --resp-listen "127.0.0.1:$kvs_tls" --tls-cert "$work/server.pem" --tls-key "$work/server.key" --log-level error &
pids+=($!)
taskset -c 0 target/release/kvsd --shards 1 --data-dir "$work/kvs-plain" --listen "127.0.0.1:$(free_port)" \
  --resp-listen "127.0.0.1:$kvs_plain" --log-level error &
pids+=($!)
tls_args=(--tls --cacert "$work/ca.pem")
for _ in $(seq 100); do
  redis-cli "${tls_args[@]}" -p "$redis_tls" ping >/dev/null 2>&1 \
    && redis-cli "${tls_args[@]}" -p "$kvs_tls" ping >/dev/null 2>&1 \
    && redis-cli -p "$kvs_plain" ping >/dev/null 2>&1 && break
  sleep 0.1
done

# one NAME PORT TLS(0|1) TEST PIPELINE -> a line "NAME PIPELINE TEST rps"
one() {
  local n=300000; (($5 > 1)) && n=2000000
  local extra=(); (($3)) && extra=("${tls_args[@]}")
  local rps
  rps=$(taskset -c 1 redis-benchmark "${extra[@]}" -p "$2" -t "$4" -n $n -c 50 -P "$5" -d 100 -r 100000 --csv 2>/dev/null \
    | python3 -c "import sys,csv; r=[r for r in csv.reader(sys.stdin) if r and r[0]=='${4^^}']; print(r[0][1] if r else 0)")
  echo "$1 $5 $4 $rps"
}
results=$work/results; : > "$results"
one redis $redis_tls 1 set 1 >/dev/null; one kvs-tls $kvs_tls 1 set 1 >/dev/null; one kvs $kvs_plain 0 set 1 >/dev/null
for _ in $(seq "$rounds"); do
  for p in 1 16; do
    for t in set get; do
      one redis-tls $redis_tls 1 $t $p >> "$results"
      one kvs-tls $kvs_tls 1 $t $p >> "$results"
      one kvs $kvs_plain 0 $t $p >> "$results"
    done
  done
done
python3 - "$results" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
def med(name, p, t):
    return st.median(float(r[3]) for r in rows if r[0] == name and r[1] == p and r[2] == t)
print("| test | kvs over TLS | Redis over TLS | ratio | kvs plaintext | TLS / plaintext |")
print("|---|---|---|---|---|---|")
for p in ("1", "16"):
    for t in ("set", "get"):
        k, r, plain = med("kvs-tls", p, t), med("redis-tls", p, t), med("kvs", p, t)
        print(f"| {t.upper()}, pipeline {p} | {k:,.0f}/s | {r:,.0f}/s | {k / r:.2f} | {plain:,.0f}/s | {k / plain:.2f} |")
PY

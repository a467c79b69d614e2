#!/usr/bin/env bash
# A 3-node cluster against a single node, in one run on this machine, with the same
# kvs-bench client (issue 13; docs/benchmarks.md): durable writes and linearizable reads,
# and the bytes the nodes sent each other per replicated write.
#
# Usage: bench/cluster.sh [SECONDS] [CLIENTS] [plain|tls|secret]   (defaults 10, 64 and
# plain; release binaries in target/release). The third says how the peer links are
# authenticated (ADR 0027): not at all, mutual TLS (certificates made here with openssl),
# or a cluster secret. All processes share the machine's cores: kvsd pins shard i of every node
# to the i-th allowed CPU, kvs-bench's threads float. Given the three nodes, kvs-bench sends
# each connection to one shard's leader (learned from INFO), as a cluster-aware client does.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
clients=${2:-64}
peer_mode=${3:-plain}
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ports=($(python3 -c 'import socket
s=[socket.socket() for _ in range(7)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'))
single=127.0.0.1:${ports[0]}
nodes=(127.0.0.1:${ports[1]} 127.0.0.1:${ports[2]} 127.0.0.1:${ports[3]})
peers=(127.0.0.1:${ports[4]} 127.0.0.1:${ports[5]} 127.0.0.1:${ports[6]})
members="1=${peers[0]},2=${peers[1]},3=${peers[2]}"

peer_flags=()
case "$peer_mode" in
  plain) ;;
  tls)
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 -subj "/CN=bench peer CA" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout "$work/peer.key" -out "$work/peer.csr" -subj "/CN=peer" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$work/ext"
    openssl x509 -req -in "$work/peer.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
      -out "$work/peer.pem" -days 2 -extfile "$work/ext" 2>/dev/null
    peer_flags=(--peer-tls-cert "$work/peer.pem" --peer-tls-key "$work/peer.key" --peer-tls-ca "$work/ca.pem")
    ;;
  secret)
    head -c 32 /dev/urandom | base64 > "$work/secret"
    peer_flags=(--cluster-secret-file "$work/secret")
    ;;
  *) echo "peer links: plain, tls or secret, not $peer_mode" >&2; exit 2 ;;
esac

wait_ready() { # wait_ready ADDR
  for _ in $(seq 100); do
    "$bin/kvs" --addr "$1" --timeout 1 ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "kvsd on $1 did not start" >&2
  exit 1
}

bench() { # bench ADDRS WORKLOAD LOAD(yes|no) -> ops/s
  local load=()
  [[ $3 == no ]] && load=(--no-load)
  "$bin/kvs-bench" --addr "$1" --workload "$2" --records 100000 --clients "$clients" \
    --duration "$seconds" "${load[@]}" --json "$work/out.json" >/dev/null
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["throughput_ops_per_sec"]))' "$work/out.json"
}

sent_bytes() { # total bytes the cluster's nodes sent each other
  local total=0
  for n in "${nodes[@]}"; do
    local b
    b=$("$bin/kvs" --addr "$n" cluster status | python3 -c 'import json,sys; print(sum(x["bytes_sent"] for x in json.load(sys.stdin)["nodes"]))')
    total=$((total + b))
  done
  echo "$total"
}

"$bin/kvsd" --data-dir "$work/single" --listen "$single" --shards 2 --cache-size 256MiB 2>"$work/single.log" &
pids+=($!)
wait_ready "$single"
single_write=$(bench "$single" write yes)
single_read=$(bench "$single" random-read no)
kill -9 "${pids[0]}"

for i in 0 1 2; do
  "$bin/kvsd" --node-id $((i + 1)) --data-dir "$work/node$i" --listen "${nodes[$i]}" \
    --peer-listen "${peers[$i]}" --initial-cluster "$members" --shards 2 --cache-size 256MiB \
    "${peer_flags[@]}" 2>"$work/node$i.log" &
  pids+=($!)
done
for n in "${nodes[@]}"; do wait_ready "$n"; done
sleep 4 # elections, and leaders moving to their preferred nodes
all=$(IFS=,; echo "${nodes[*]}")
bench "$all" write yes >/dev/null # the load phase, measured apart from the bytes below
before=$(sent_bytes)
cluster_write=$(bench "$all" write no)
after=$(sent_bytes)
cluster_read=$(bench "$all" random-read no)

writes=$((cluster_write * seconds))
python3 - "$single_write" "$cluster_write" "$single_read" "$cluster_read" "$before" "$after" "$writes" "$peer_mode" <<'EOF'
import sys
sw, cw, sr, cr, before, after, writes = map(int, sys.argv[1:8])
mode = sys.argv[8]
print(f"{'':28}{'1 node':>12}{'3 nodes':>12}{'ratio':>8}   (peer links: {mode})")
print(f"{'durable writes (ops/s)':28}{sw:>12}{cw:>12}{cw / sw:>8.2f}")
print(f"{'linearizable reads (ops/s)':28}{sr:>12}{cr:>12}{cr / sr:>8.2f}")
print(f"bytes between nodes per replicated write (100-byte values): {(after - before) / max(writes, 1):.0f}")
EOF

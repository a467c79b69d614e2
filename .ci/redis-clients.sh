#!/usr/bin/env bash
# Real Redis clients against kvsd's RESP listener: redis-cli, redis-benchmark and the Python
# redis client (RESP3 by default, and RESP2). Installs them if missing (Debian packages and
# PyPI). Exits non-zero on the first wrong answer.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null; then
  (apt-get install -y -q redis-tools >/dev/null 2>&1) || { apt-get update -q >/dev/null && apt-get install -y -q redis-tools >/dev/null; }
fi
python3 -c 'import redis' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check redis >/dev/null 2>&1

cargo build --release -q --bin kvsd
work=$(mktemp -d /tmp/kvs-redis-clients.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
target/release/kvsd --data-dir "$work/data" --shards 2 --listen "127.0.0.1:$(free_port)" --resp-listen "127.0.0.1:$port" \
  --log-level warn &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

expect() { # expect WANT COMMAND...
  local want=$1; shift
  local got
  got=$(redis-cli -p "$port" "$@")
  [[ $got == "$want" ]] || { echo "redis-cli $*: expected '$want', got '$got'"; exit 1; }
}
expect PONG ping
expect OK set greeting "hello world"
expect "hello world" get greeting
expect 1 incr counter
expect 11 incrby counter 10
expect 2 del greeting counter
expect "" get greeting
expect OK mset a 1 b 2 c 3
expect $'1\n\n3' mget a nope c
[[ $(redis-cli -p "$port" --scan | sort | tr '\n' ' ') == "a b c " ]] || { echo "redis-cli --scan lists the wrong keys"; exit 1; }
# --bigkeys walks the keys with SCAN, asks TYPE and STRLEN, and reports the biggest string.
bigkeys=$(redis-cli -p "$port" --bigkeys 2>&1)
grep -q "Biggest string found" <<<"$bigkeys" || { echo "redis-cli --bigkeys failed:"; echo "$bigkeys"; exit 1; }
# --memkeys asks MEMORY USAGE of each key.
memkeys=$(redis-cli -p "$port" --memkeys 2>&1)
grep -qE "^3 strings with [1-9][0-9]* bytes" <<<"$memkeys" || { echo "redis-cli --memkeys failed:"; echo "$memkeys"; exit 1; }
# --stat reads INFO's fields every second: every column must be a number (a missing field
# prints as -9223372036854775808).
stat=$(timeout 3 stdbuf -o0 redis-cli -p "$port" --stat 2>&1 || true)
sed -n 3p <<<"$stat" | grep -qE '^3 +[0-9.]+[KMG]?B? +[0-9]+ +0 +[0-9]+ ' && ! grep -q -- '-9223372036854775808' <<<"$stat" ||
  { echo "redis-cli --stat failed:"; echo "$stat"; exit 1; }
[[ $(redis-cli -p "$port" info keyspace | head -1 | tr -d '\r') == "# Keyspace" ]] || { echo "INFO keyspace gave other sections"; exit 1; }
expect 1 setnx fresh 1
expect 0 setnx fresh 2
expect 1 unlink fresh
expect $'a\nb\nc' keys '*'
echo "redis-cli: ok"

# -q prints progress lines and then one final "requests per second" line per test.
out=$(redis-benchmark -p "$port" -t set,get -n 20000 -c 20 -P 4 -q 2>/dev/null | tr '\r' '\n' |
  grep -E '^(SET|GET): [0-9.]+ requests per second' || true)
echo "$out"
[[ $(grep -c 'requests per second' <<<"$out") == 2 ]] || { echo "redis-benchmark did not finish both tests"; exit 1; }

python3 - "$port" <<'PY'
import sys
import redis
port = int(sys.argv[1])
for protocol in (3, 2):
    r = redis.Redis(port=port, protocol=protocol)
    assert r.ping()
    assert r.set("py:k", "v") and r.get("py:k") == b"v"
    assert r.get("py:missing") is None
    assert r.incr("py:n") >= 1
    assert r.mget(["py:k", "py:missing"]) == [b"v", None]
    assert r.set("py:k", "w", nx=True) is None
    assert r.exists("py:k") == 1 and r.delete("py:k") == 1
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"py:p{i}", i)
    assert all(pipe.execute())
    assert r.get("py:p499") == b"499"
    assert len(list(r.scan_iter(match="py:p*", count=100))) == 500
    assert r.dbsize() >= 500
    # Pipelined commands take effect in the order sent: these are Redis's own answers.
    pipe = r.pipeline(transaction=False)
    pipe.set("py:a", 1).get("py:a").incr("py:a").get("py:a").delete("py:a").get("py:a")
    got = pipe.execute()
    assert got == [True, b"1", 2, b"2", 1, None], got
    # A transactional pipeline (MULTI ... EXEC): run at once, across shards.
    pipe = r.pipeline(transaction=True)
    pipe.set(f"py:tx{protocol}", 1).incr(f"py:txn{protocol}").get(f"py:tx{protocol}")
    assert pipe.execute() == [True, 1, b"1"]
    # WATCH through redis-py's transaction() helper: concurrent increments lose nothing.
    import threading
    def bump(pipe, key=f"py:watched{protocol}"):
        n = int(pipe.get(key) or 0)
        pipe.multi()
        pipe.set(key, n + 1)
    def worker():
        mine = redis.Redis(port=port, protocol=protocol)
        for _ in range(50):
            mine.transaction(bump, f"py:watched{protocol}")
    threads = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert r.get(f"py:watched{protocol}") == b"200", r.get(f"py:watched{protocol}")
    assert r.ping()
    # A scan continued on other connections of a pool, and a type filter.
    cursor, seen = 0, set()
    while True:
        cursor, keys = redis.Redis(port=port, protocol=protocol).scan(cursor, match="py:p*", count=50)
        seen.update(keys)
        if cursor == 0:
            break
    assert len(seen) == 500, len(seen)
    assert list(r.scan_iter(_type="hash")) == []
    # A value over the limit: an error naming it, and the connection goes on.
    try:
        r.set("py:big", b"x" * (16 * 1024 * 1024 + 1))
        raise AssertionError("a 16 MiB + 1 value was accepted")
    except redis.exceptions.ResponseError as e:
        assert "16 MiB" in str(e), e
    assert r.ping()
print("redis-py (RESP3 and RESP2): ok")
PY

# A bank through redis-py's WATCH/MULTI/EXEC, kvsd killed with -9 in the middle of the
# transfers and restarted: the total never changes and no account goes negative.
python3 - "$port" open <<'PY'
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
r.mset({f"bank:{i:02}": 100 for i in range(16)})
PY
python3 - "$port" transfer <<'PY' &
import random, sys, threading, redis
port = int(sys.argv[1])
def transfer(rng):
    r = redis.Redis(port=port)
    while True:
        a, b = rng.sample(range(16), 2)
        ka, kb = f"bank:{a:02}", f"bank:{b:02}"
        def move(pipe):
            have, theirs = int(pipe.get(ka)), int(pipe.get(kb))
            amount = min(have, rng.randrange(1, 10))
            pipe.multi()
            pipe.set(ka, have - amount)
            pipe.set(kb, theirs + amount)
        try:
            r.transaction(move, ka, kb)
        except redis.exceptions.RedisError:
            return  # kvsd was killed: this transfer's outcome is unknown
threads = [threading.Thread(target=transfer, args=(random.Random(i),)) for i in range(4)]
[t.start() for t in threads]
audit, audits = redis.Redis(port=port), 0
while True:
    try:
        pipe = audit.pipeline(transaction=True)
        pipe.mget([f"bank:{i:02}" for i in range(16)])
        balances = [int(v) for v in pipe.execute()[0]]
    except redis.exceptions.RedisError:
        break
    assert sum(balances) == 1600 and min(balances) >= 0, balances
    audits += 1
[t.join() for t in threads]
assert audits >= 5, audits
print(f"redis-py bank: {audits} audits under transfers until kill -9: ok", flush=True)
PY
transfers=$!
sleep 3
kill -9 $server; wait $server 2>/dev/null || true
wait $transfers || { echo "the redis-py bank's audits failed"; exit 1; }
target/release/kvsd --data-dir "$work/data" --shards 2 --listen "127.0.0.1:$(free_port)" --resp-listen "127.0.0.1:$port" \
  --log-level warn &
server=$!
for _ in $(seq 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
python3 - "$port" <<'PY'
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
balances = [int(v) for v in r.mget([f"bank:{i:02}" for i in range(16)])]
assert sum(balances) == 1600 and min(balances) >= 0, balances
print("redis-py bank after kill -9: total", sum(balances), "ok")
PY

# A three-node cluster: redis-cli and redis-py on any node see one store (each node forwards
# to the shard's leader), pipelines keep their order through a forwarding node, and a write
# acknowledged by one node is read by every other at once (linearizable reads).
cargo build --release -q --bin kvs
cluster_ports=($(python3 -c 'import socket
s=[socket.socket() for _ in range(9)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'))
members="1=127.0.0.1:${cluster_ports[6]},2=127.0.0.1:${cluster_ports[7]},3=127.0.0.1:${cluster_ports[8]}"
nodes=()
for i in 0 1 2; do
  target/release/kvsd --node-id $((i + 1)) --data-dir "$work/node$i" --shards 2 \
    --listen "127.0.0.1:${cluster_ports[$i]}" --resp-listen "127.0.0.1:${cluster_ports[$((i + 3))]}" \
    --peer-listen "127.0.0.1:${cluster_ports[$((i + 6))]}" --initial-cluster "$members" --log-level warn &
  nodes+=($!)
done
trap 'kill $server "${nodes[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
resp=("${cluster_ports[@]:3:3}")
for p in "${resp[@]}"; do
  for _ in $(seq 200); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
# Until every shard has a leader, requests answer -NOQUORUM (redis-cli does not retry): wait
# until each shard is led by its preferred node (shard i by node i+1), where leadership moves
# once the first elections settle, and every node agrees.
settled=0
for _ in $(seq 200); do
  views=""
  for n in 0 1 2; do
    views+=$(target/release/kvs --addr "127.0.0.1:${cluster_ports[$n]}" --timeout 2 cluster status |
      python3 -c 'import json,sys; print([s["leader"] for s in json.load(sys.stdin)["shards"]])' 2>/dev/null)
  done
  [[ $views == "[1, 2][1, 2][1, 2]" ]] && { settled=1; break; }
  sleep 0.1
done
[[ $settled == 1 ]] || { echo "the cluster's leaders did not settle: $views"; exit 1; }
port=${resp[0]}; expect OK set user:1 alice
port=${resp[1]}; expect alice get user:1
port=${resp[2]}; expect alice get user:1
port=${resp[2]}; expect 1 del user:1
port=${resp[0]}; expect "" get user:1
echo "redis-cli on a 3-node cluster: ok"

python3 - "${resp[@]}" <<'PY'
import random
import sys
import redis
ports = [int(p) for p in sys.argv[1:]]
nodes = [redis.Redis(port=p, protocol=3) for p in ports]
rng = random.Random(7)
for i in range(300):
    writer, reader = rng.choice(nodes), rng.choice(nodes)
    key = f"lin:{rng.randrange(20)}"
    assert writer.set(key, i)
    got = reader.get(key)
    assert got == str(i).encode(), (key, i, got)
for r in nodes:
    pipe = r.pipeline(transaction=False)
    pipe.set("py:a", 1).get("py:a").incr("py:a").get("py:a").delete("py:a").get("py:a")
    got = pipe.execute()
    assert got == [True, b"1", 2, b"2", 1, None], got
    # KEYS goes to each shard's leader: exactly the keys written.
    assert sorted(r.keys("lin:*")) == sorted(f"lin:{k}".encode() for k in range(20))
print("redis-py on a 3-node cluster: ok")
PY

# Users and roles (ADR 0025): redis-cli --user/--pass and redis-py with a username and
# password against a node with --auth required.
users="$work/users"
echo "writer-pw" | target/release/kvs user add --file "$users" writer readwrite 2>/dev/null
echo "reader-pw" | target/release/kvs user add --file "$users" reader read 2>/dev/null
aport=$(free_port)
target/release/kvsd --data-dir "$work/auth-data" --shards 2 --listen "127.0.0.1:$(free_port)" \
  --resp-listen "127.0.0.1:$aport" --auth required --users-file "$users" --log-level error &
auth_server=$!
trap 'kill $server "${nodes[@]}" $auth_server 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 200); do redis-cli -p "$aport" ping >/dev/null 2>&1 && break; sleep 0.1; done
got=$(redis-cli -p "$aport" set k v 2>&1)
[[ $got == *NOAUTH* ]] || { echo "unauthenticated SET: expected NOAUTH, got '$got'"; exit 1; }
got=$(redis-cli -p "$aport" --user writer --pass wrong --no-auth-warning set k v 2>&1)
[[ $got == *WRONGPASS* ]] || { echo "wrong password: expected WRONGPASS, got '$got'"; exit 1; }
got=$(redis-cli -p "$aport" --user writer --pass writer-pw --no-auth-warning set k v)
[[ $got == OK ]] || { echo "writer's SET: got '$got'"; exit 1; }
got=$(redis-cli -p "$aport" --user reader --pass reader-pw --no-auth-warning set k w 2>&1)
[[ $got == *NOPERM* ]] || { echo "reader's SET: expected NOPERM, got '$got'"; exit 1; }
got=$(redis-cli -p "$aport" --user reader --pass reader-pw --no-auth-warning get k)
[[ $got == v ]] || { echo "reader's GET: got '$got'"; exit 1; }
echo "redis-cli with users and roles: ok"
python3 - "$aport" <<'PY'
import sys
import redis
port = int(sys.argv[1])
for protocol in (3, 2):
    writer = redis.Redis(port=port, username="writer", password="writer-pw", protocol=protocol)
    assert writer.set(f"py:auth{protocol}", "1")
    reader = redis.Redis(port=port, username="reader", password="reader-pw", protocol=protocol)
    assert reader.get(f"py:auth{protocol}") == b"1"
    try:
        reader.set(f"py:auth{protocol}", "2")
        raise AssertionError("a reader wrote")
    except redis.exceptions.NoPermissionError:
        pass
    try:
        redis.Redis(port=port, username="writer", password="nope", protocol=protocol).ping()
        raise AssertionError("a wrong password passed")
    except redis.exceptions.AuthenticationError:
        pass
print("redis-py with users and roles (RESP3 and RESP2): ok")
PY

# TLS (docs/security.md): redis-cli --tls and redis-py with ssl=True against a node whose
# client listeners speak only TLS, with a certificate made here by openssl.
command -v openssl >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q openssl >/dev/null; }
tls="$work/tls"; mkdir -p "$tls"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tls/ca.key" -out "$tls/ca.pem" -days 2 -subj "/CN=kvs test CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$tls/server.key" -out "$tls/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$tls/ext"
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
  -out "$tls/server.pem" -days 2 -extfile "$tls/ext" 2>/dev/null
tport=$(free_port); tnative=$(free_port)
target/release/kvsd --data-dir "$work/tls-data" --shards 2 --listen "127.0.0.1:$tnative" \
  --resp-listen "127.0.0.1:$tport" --tls-cert "$tls/server.pem" --tls-key "$tls/server.key" --log-level error &
tls_server=$!
trap 'kill $server "${nodes[@]}" $auth_server $tls_server 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 200); do redis-cli --tls --cacert "$tls/ca.pem" -p "$tport" ping >/dev/null 2>&1 && break; sleep 0.1; done
got=$(redis-cli --tls --cacert "$tls/ca.pem" -p "$tport" set secret s3)
[[ $got == OK ]] || { echo "redis-cli --tls SET: got '$got'"; exit 1; }
got=$(redis-cli --tls --cacert "$tls/ca.pem" -p "$tport" get secret)
[[ $got == s3 ]] || { echo "redis-cli --tls GET: got '$got'"; exit 1; }
got=$(timeout 10 redis-cli -p "$tport" ping 2>&1 || true)
[[ $got != PONG ]] || { echo "a plaintext redis-cli was answered on a TLS listener"; exit 1; }
out=$(redis-benchmark --tls --cacert "$tls/ca.pem" -p "$tport" -t set,get -n 20000 -c 20 -P 4 -q 2>/dev/null | tr '\r' '\n' | grep -E '^(SET|GET):' || true)
[[ $(grep -c 'requests per second' <<<"$out") == 2 ]] || { echo "redis-benchmark --tls: '$out'"; exit 1; }
echo "redis-cli and redis-benchmark over TLS: ok"
python3 - "$tport" "$tls/ca.pem" <<'PY'
import sys
import redis
port, ca = int(sys.argv[1]), sys.argv[2]
for protocol in (3, 2):
    r = redis.Redis(port=port, ssl=True, ssl_ca_certs=ca, protocol=protocol)
    assert r.set(f"py:tls{protocol}", "x" * 100000)
    assert r.get(f"py:tls{protocol}") == b"x" * 100000
    pipe = r.pipeline(transaction=True)
    pipe.incr("py:tlsn").incr("py:tlsn")
    assert pipe.execute()[-1] >= 2
print("redis-py over TLS (RESP3 and RESP2): ok")
PY
target/release/kvs --addr "127.0.0.1:$tnative" --tls-ca "$tls/ca.pem" put native-tls yes >/dev/null
got=$(target/release/kvs --addr "127.0.0.1:$tnative" --tls-ca "$tls/ca.pem" get native-tls)
[[ $got == yes ]] || { echo "kvs --tls-ca: got '$got'"; exit 1; }
echo "kvs over TLS: ok"

#!/usr/bin/env bash
# Runs compare_mongo.py against a fresh 2-shard kvsd (release build) and fails when any
# case differs from the MongoDB reference. Installs mongomock from PyPI if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import mongomock' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check mongomock \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages mongomock
fi
cargo build --release --quiet --bin kvsd --bin kvs
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
./target/release/kvsd --data-dir "$dir/data" --listen "127.0.0.1:$port" --shards 2 \
  --log-level warn > "$dir/kvsd.log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 200); do
  ./target/release/kvs --addr "127.0.0.1:$port" ping > /dev/null 2>&1 && break
  sleep 0.05
done
python3 conformance/compare_mongo.py ./target/release/kvs "127.0.0.1:$port"

#!/usr/bin/env bash
# Installs kvs on this host for systemd (run as root from the project root, after
# `cargo build --release`): the binaries to /usr/local/bin, the units to
# /etc/systemd/system, a configuration to /etc/kvs (an existing one is kept), the docs the
# units name to /usr/local/share/doc/kvs. No account is created: the units use DynamicUser.
#   ops/install.sh            one node: kvsd.service with /etc/kvs/kvsd.toml
#   ops/install.sh node2      a cluster node: kvsd@node2.service with /etc/kvs/node2.toml
#                             (from ops/cluster/node2.toml; edit its addresses)
set -euo pipefail
instance=${1:-}
prefix=${PREFIX:-/usr/local}
for binary in kvsd kvs kvs-bench; do
  install -D -m 0755 "target/release/$binary" "$prefix/bin/$binary"
done
install -D -m 0644 ops/kvsd.service /etc/systemd/system/kvsd.service
install -D -m 0644 ops/kvsd@.service /etc/systemd/system/kvsd@.service
install -d -m 0755 "$prefix/share/doc/kvs"
install -m 0644 docs/operations.md docs/cluster.md docs/protocol.md "$prefix/share/doc/kvs/"
install -d -m 0755 /etc/kvs
if [[ -z $instance ]]; then
  config=/etc/kvs/kvsd.toml; source=ops/kvsd.toml; unit=kvsd.service
else
  config=/etc/kvs/$instance.toml; source=ops/cluster/$instance.toml; unit=kvsd@$instance.service
fi
if [[ -e $config ]]; then
  echo "kept the existing $config"
else
  install -m 0644 "$source" "$config"
  echo "installed $config: review it"
fi
systemctl daemon-reload 2>/dev/null || echo "systemd is not running here: daemon-reload skipped"
echo "then: systemctl enable --now $unit"

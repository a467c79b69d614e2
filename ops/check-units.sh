#!/usr/bin/env bash
# Checks the systemd units the way CI does (as root, from the project root, after
# `cargo build --release`): installs them with ops/install.sh (`systemd-analyze verify`
# wants the binary a unit starts where the unit says), verifies both units, taking any
# complaint as a failure (verify exits 0 after a setting it ignored), and requires
# `systemd-analyze security --offline=true` to rate each unit's exposure at most 4.0.
set -euo pipefail
command -v systemd-analyze >/dev/null || apt-get install -y -q systemd >/dev/null
ops/install.sh node1 >/dev/null
status=0
for unit in kvsd.service kvsd@node1.service; do
  complaints=$(systemd-analyze verify "$unit" 2>&1) || status=1
  if [[ -n $complaints ]]; then
    echo "systemd-analyze verify $unit:"; echo "$complaints"; status=1
  fi
  # --threshold is in tenths: 40 is an exposure of 4.0.
  if ! rating=$(systemd-analyze security --offline=true --threshold=40 "$unit" 2>&1); then
    echo "$rating" | grep -v '^✓'; status=1
  fi
  echo "$unit: $(echo "$rating" | tail -1 | sed 's/^→ //')"
done
exit $status

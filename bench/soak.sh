#!/usr/bin/env bash
# The soak (issue 16, docs/benchmarks.md): OPS operations (default 10 million) of a mixed
# workload against one kvsd — YCSB A on keys (70%), document inserts (15%) and document
# finds by a field (15%), at once — with checkpoints happening (a small --checkpoint-log-size),
# while kvsd's resident memory, open files, page files and log are sampled every 2 s. Then
# kvsd stops and `kvsd --verify` checks its files. Writes the samples (CSV), a plot (SVG)
# and the verdict.
#
#   bench/soak.sh [OPS] [OUT_DIR]      (OUT_DIR default: docs/benchmarks/soak)
set -euo pipefail
cd "$(dirname "$0")/.."
ops=${1:-10000000}
out=${2:-docs/benchmarks/soak}
cache_mib=256
cargo build --release -q --bin kvsd --bin kvs-bench
mkdir -p "$out"
work=$(mktemp -d /tmp/kvs-soak.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/kvsd --data-dir "$work/data" --shards 2 --listen "127.0.0.1:$port" \
  --cache-size ${cache_mib}MiB --checkpoint-log-size 32MiB --log-level warn 2>"$work/kvsd.log" &
kvsd=$!
for _ in $(seq 100); do target/release/kvs --addr "127.0.0.1:$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

samples=$out/samples.csv
echo "seconds,rss_mib,open_files,page_files_mib,log_mib" > "$samples"
start=$(date +%s)
sample() {
  while kill -0 $kvsd 2>/dev/null; do
    local rss fds pages log
    rss=$(awk '/^VmRSS/ {print $2 / 1024}' /proc/$kvsd/status 2>/dev/null || echo 0)
    fds=$(ls /proc/$kvsd/fd 2>/dev/null | wc -l)
    pages=$(find "$work/data" -name 'pages.db' -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s / 1048576}')
    log=$(find "$work/data" -name '*.log' -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s / 1048576}')
    echo "$(( $(date +%s) - start )),$rss,$fds,$pages,$log" >> "$samples"
    sleep 2
  done
}
sample &

bench() { target/release/kvs-bench --addr "127.0.0.1:$port" --clients 8 --pipeline 4 "$@"; }
kv_ops=$((ops * 70 / 100)); doc_ops=$((ops * 15 / 100))
# 100,000 documents first (and the one insert of that run: _id 100000), with an index on the
# field the finds ask for.
bench --workload doc-insert --records 100000 --ops 1 >"$work/load.out" 2>&1
target/release/kvs --addr "127.0.0.1:$port" index create bench n >/dev/null
bench --workload ycsb-a --records 200000 --ops $kv_ops --json "$work/kv.json" >"$work/kv.out" 2>&1 &
kv=$!
( bench --workload doc-insert --no-load --records 100001 --ops $doc_ops --json "$work/insert.json" \
  && bench --workload doc-point --no-load --records 100000 --field n --ops $doc_ops --json "$work/point.json" ) \
  >"$work/doc.out" 2>&1 &
docs=$!
kv_ok=0; doc_ok=0
wait $kv && kv_ok=1
wait $docs && doc_ok=1
elapsed=$(( $(date +%s) - start ))
kill -TERM $kvsd; wait $kvsd || true
verify=$(target/release/kvsd --verify --data-dir "$work/data" 2>&1 | tail -3)
verify_ok=0; target/release/kvsd --verify --data-dir "$work/data" >/dev/null 2>&1 && verify_ok=1
cp "$work/kv.out" "$out/kv.out"; cp "$work/doc.out" "$out/doc.out"

python3 - "$samples" "$out" "$cache_mib" "$ops" "$elapsed" "$kv_ok" "$doc_ok" "$verify_ok" "$work" <<'PY'
import csv, json, os, sys
samples, out, cache, ops, elapsed, kv_ok, doc_ok, verify_ok, work = sys.argv[1:]
rows = [r for r in csv.DictReader(open(samples))]
t = [float(r["seconds"]) for r in rows]
rss = [float(r["rss_mib"]) for r in rows]
fds = [float(r["open_files"]) for r in rows]
pages = [float(r["page_files_mib"]) for r in rows]
n = len(rows)
warm = n // 5
after = rss[warm:] or rss
half = rss[n // 2:] or rss
errors = 0
for name in ("kv", "insert", "point"):
    path = os.path.join(work, f"{name}.json")
    if os.path.exists(path):
        report = json.load(open(path))
        errors += int(report.get("errors", 0) or 0)
budget = float(cache) + 256
within = max(after) <= budget
# Flat: over the last half, RSS moves by at most 5% of its peak.
flat = (max(half) - min(half)) <= 0.05 * max(half)
# Open files rise and fall with the workloads' connections; what must not happen is a climb:
# the last half never above the peak of the warm first half (plus a few log segments).
fds_flat = max(fds[n // 2:] or fds) <= max(fds[warm:n // 2] or fds) + 4
ok = within and flat and fds_flat and errors == 0 and kv_ok == "1" and doc_ok == "1" and verify_ok == "1"
# The plot: RSS and open files over time.
W, H, P = 720, 300, 40
def line(values, top, colour):
    pts = " ".join(f"{P + (W - 2 * P) * x / max(t[-1], 1):.1f},{H - P - (H - 2 * P) * y / max(top, 1):.1f}" for x, y in zip(t, values))
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>'
top = max(max(rss), budget) * 1.1
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{P}" y1="{H-P}" x2="{W-P}" y2="{H-P}" stroke="black"/><line x1="{P}" y1="{P}" x2="{P}" y2="{H-P}" stroke="black"/>',
       line(rss, top, "#c0392b"), line([budget] * n, top, "#999"), line(pages, top, "#2980b9"),
       f'<text x="{P}" y="{P-10}">RSS (red), page files (blue), MiB, against the cache budget + 256 MiB (grey), over {t[-1]:.0f} s; top {top:.0f} MiB</text>',
       f'<text x="{W-P}" y="{H-P+15}" text-anchor="end">{ops} operations</text>', '</svg>']
open(os.path.join(out, "soak.svg"), "w").write("\n".join(svg))
verdict = (f"{'PASS' if ok else 'FAIL'}: {ops} operations in {elapsed} s; RSS after warm-up "
           f"{min(after):.0f}-{max(after):.0f} MiB (cache {cache} MiB + 256 MiB budget: {'within' if within else 'OVER'}), "
           f"last half {min(half):.0f}-{max(half):.0f} MiB ({'flat' if flat else 'GROWING'}); open files "
           f"{min(fds):.0f}-{max(fds):.0f} ({'flat' if fds_flat else 'GROWING'}); page files up to {max(pages):.0f} MiB; "
           f"errors {errors}; workloads {'ok' if kv_ok == doc_ok == '1' else 'FAILED'}; kvsd --verify {'clean' if verify_ok == '1' else 'NOT CLEAN'}")
open(os.path.join(out, "verdict.txt"), "w").write(verdict + "\n")
print(verdict)
sys.exit(0 if ok else 1)
PY
echo "$verify"

#!/usr/bin/env python3
"""Failover time of a 3-node kvs cluster on this machine (issue 13; docs/benchmarks.md).

Starts three kvsd processes on loopback, then for each trial: finds shard 0's leader with
`kvs cluster status`, kill -9s it, and writes a key of shard 0 through the other two nodes'
RESP listeners (a client that retries at once on NOQUORUM or TIMEOUT) until one write is
acknowledged. The time from the kill to that acknowledgement is the trial's failover time.
The killed node is then restarted and the next trial waits until it has caught up and
leadership has settled (shard 0 back on its preferred node).

Usage: bench/failover.py [--trials 20] [--bin target/release] [--shards 2]
       [--election-timeout 500ms] [--heartbeat-interval 50ms]
Prints one line per trial and then the median and max in milliseconds.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def resp_command(*args: bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def resp_set(port: int, key: bytes, value: bytes, timeout: float) -> str:
    """One SET on a fresh connection: 'ok', or the error's first word, or 'down'."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(resp_command(b"SET", key, value))
            line = b""
            while not line.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return "down"
                line += chunk
    except OSError:
        return "down"
    if line.startswith(b"+OK"):
        return "ok"
    return line[1:].split(b" ")[0].decode(errors="replace")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--bin", default="target/release")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--election-timeout", default="500ms")
    p.add_argument("--heartbeat-interval", default="50ms")
    a = p.parse_args()
    kvsd = os.path.join(a.bin, "kvsd")
    kvs = os.path.join(a.bin, "kvs")
    ports = free_ports(9)
    native, resp, peer = ports[0:3], ports[3:6], ports[6:9]
    members = ",".join(f"{i + 1}=127.0.0.1:{peer[i]}" for i in range(3))
    work = tempfile.mkdtemp(prefix="kvs-failover-")
    procs = [None, None, None]

    def start(i):
        log = open(os.path.join(work, f"node{i + 1}.log"), "a")
        procs[i] = subprocess.Popen(
            [kvsd, "--node-id", str(i + 1), "--data-dir", os.path.join(work, f"d{i + 1}"),
             "--listen", f"127.0.0.1:{native[i]}", "--peer-listen", f"127.0.0.1:{peer[i]}",
             "--resp-listen", f"127.0.0.1:{resp[i]}", "--shards", str(a.shards),
             "--initial-cluster", members, "--election-timeout", a.election_timeout,
             "--heartbeat-interval", a.heartbeat_interval, "--cache-size", "64MiB"],
            stdout=subprocess.DEVNULL, stderr=log)

    def status(i):
        out = subprocess.run([kvs, "--addr", f"127.0.0.1:{native[i]}", "--timeout", "2",
                              "cluster", "status"], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def settled():
        """Shard 0's leader once all three nodes agree on every shard's leader and node 1
        (shard 0's preferred node) leads shard 0 with every replica caught up."""
        views = [status(i) for i in range(3)]
        if any(v is None for v in views):
            return None
        leaders = [[s["leader"] for s in v["shards"]] for v in views]
        if leaders[0] != leaders[1] or leaders[1] != leaders[2] or None in leaders[0]:
            return None
        shard0 = views[leaders[0][0] - 1]["shards"][0]
        matches = [r["match_index"] for r in shard0["replicas"]]
        if leaders[0][0] != 1 or len(set(matches)) != 1:
            return None
        return leaders[0][0]

    key = next(k for k in (f"failover-{n}".encode() for n in range(1000))
               if fnv1a(k) % a.shards == 0)
    times = []
    keep = [False]
    try:
        for i in range(3):
            start(i)
        for trial in range(a.trials):
            deadline = time.time() + 60
            leader = None
            while leader is None:
                if time.time() > deadline:
                    keep[0] = True
                    views = [status(i) for i in range(3)]
                    sys.exit(f"the cluster did not settle; logs in {work}; status: {views}")
                time.sleep(0.2)
                leader = settled()
            victim = leader - 1
            others = [i for i in range(3) if i != victim]
            # A write before the kill, to be sure the path is warm.
            assert resp_set(resp[others[0]], key, b"before", 5) == "ok"
            killed = time.monotonic()
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            attempt = 0
            errors = {}
            while True:
                result = resp_set(resp[others[attempt % 2]], key, b"v%d" % trial, 5)
                attempt += 1
                if result == "ok":
                    break
                errors[result] = errors.get(result, 0) + 1
                time.sleep(0.002)
            elapsed = (time.monotonic() - killed) * 1000
            times.append(elapsed)
            print(f"trial {trial + 1}: killed node {leader}, first write after {elapsed:.0f} ms "
                  f"({attempt} attempts; refused: {errors})", flush=True)
            start(victim)
        print(f"failover over {len(times)} trials: median {statistics.median(times):.0f} ms, "
              f"max {max(times):.0f} ms, min {min(times):.0f} ms")
    finally:
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if not keep[0]:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Soak benchmark: many clients against one parameter server for minutes, memory watched.

The server runs in its own process (so its peak resident memory, VmHWM, is its alone) with
DOWNPOUR on a model of ``--params`` float32 parameters; ``--clients`` client processes loop on
``commit_pull`` and ``commit`` for ``--duration`` seconds. It prints throughput per
``--bucket`` seconds, the server's peak resident memory against the target (three times the
model plus a fixed base: the base is the server process's own footprint before the model
existed), and checks that the center equals the exact sum of every delta (each client commits
the constant delta of its own id, so nothing lost or applied twice shows as a wrong sum).

    python benchmarks/soak.py --clients 16 --params 10000000 --duration 300
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from typing import Any

import numpy as np


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def server_process(params: int, clients: int, secret: bytes, conn: Any) -> None:
    from distkeras_async import ParameterServer

    base = peak_rss_mb()
    server = ParameterServer(
        [np.zeros(params, np.float32)],
        "downpour",
        num_workers=clients,
        secret=secret,
        max_connections=clients + 8,
    )
    port = server.start()
    # Measure the serving phase: forget the peak of building the initial weights (the
    # caller's weight list and its flat copy briefly coexist before the server owns one).
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    conn.send((port, base))
    conn.recv()  # wait until the clients are done
    peak = peak_rss_mb()
    center = server.center_flat
    stats = server.stats()
    server.stop()
    conn.send(
        {
            "base_mb": base,
            "peak_mb": peak,
            "version": stats.version,
            "commits": stats.commits,
            "center_buffers": stats.center_buffers,
            "receive_buffers": stats.receive_buffers,
            "center_min": float(center.min()),
            "center_max": float(center.max()),
        }
    )


def client_process(
    port: int, secret: bytes, worker: int, params: int, duration: float, results: Any
) -> None:
    from distkeras_async import ParameterServerClient

    delta = np.full(params, float(worker + 1), np.float32)
    out = np.empty(params, np.float32)
    stamps = []
    with ParameterServerClient("127.0.0.1", port, secret, worker, timeout=300) as client:
        deadline = time.time() + duration
        k = 0
        while time.time() < deadline:
            if k % 2:
                client.commit(delta)
            else:
                client.commit_pull(delta, out=out)
            stamps.append(time.time())
            k += 1
    results.put((worker, stamps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--bucket", type=float, default=30.0)
    args = parser.parse_args()
    from distkeras_async import new_secret

    ctx = mp.get_context("spawn")
    secret = new_secret()
    parent, child = ctx.Pipe()
    server = ctx.Process(target=server_process, args=(args.params, args.clients, secret, child))
    server.start()
    port, _ = parent.recv()
    results = ctx.Queue()
    began = time.time()
    procs = [
        ctx.Process(
            target=client_process, args=(port, secret, w, args.params, args.duration, results)
        )
        for w in range(args.clients)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=args.duration + 600) for _ in procs]
    for p in procs:
        p.join(60)
    parent.send("done")
    summary = parent.recv()
    server.join(60)

    commits = {w: len(s) for w, s in outcomes}
    expected = float(sum((w + 1) * n for w, n in commits.items()))
    stamps = sorted(t for _, s in outcomes for t in s)
    buckets = []
    edge = began
    while edge < stamps[-1]:
        n = sum(1 for t in stamps if edge <= t < edge + args.bucket)
        buckets.append(round(n / args.bucket, 1))
        edge += args.bucket
    model_mb = args.params * 4 / 2**20
    result = {
        "benchmark": "soak",
        "clients": args.clients,
        "params": args.params,
        "duration_s": args.duration,
        "updates_per_s_by_bucket": buckets,
        "updates_per_s": round(len(stamps) / (stamps[-1] - began), 1),
        "total_commits": sum(commits.values()),
        "server": summary,
        "model_mb": round(model_mb, 1),
        "peak_over_base_in_models": round((summary["peak_mb"] - summary["base_mb"]) / model_mb, 2),
        "exact_sum": summary["center_min"] == summary["center_max"] == expected,
        "commits_match": summary["commits"] == sum(commits.values()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

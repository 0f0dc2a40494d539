"""Shard scaling: commit_pull round trips/s over workers and shards, against the raw socket.

For each model size and worker count, in one run: the raw-socket ceiling, and our server
with each shard count (K = 1 is the in-process server, K > 1 that many shard processes),
alternating ``--repeats`` times; medians. Each row gives K shards against the raw socket and
against one shard measured in the same run.

    python benchmarks/scaling.py --params 1000000 10000000 --workers 1 2 4 --shards 1 2
    python benchmarks/scaling.py --workers 1 4 16 64 --shards 1 2 4 8    # a 16-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

from distkeras_async.bench import measure_baseline, measure_server


def main() -> None:
    """Measure the matrix; print one JSON object per cell and a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    shards = sorted(set(args.shards) | {1})
    rows = []
    for params in args.params:
        for workers in args.workers:
            raw: list[float] = []
            ours: dict[int, list[float]] = {k: [] for k in shards}
            for _ in range(args.repeats):
                raw.append(measure_baseline(params, workers, args.duration))
                for k in shards:
                    ours[k].append(measure_server(params, workers, args.duration, shards=k))
            base, one = statistics.median(raw), statistics.median(ours[1])
            for k in shards:
                median = statistics.median(ours[k])
                cell = {
                    "params": params,
                    "workers": workers,
                    "shards": k,
                    "round_trips_per_s": median,
                    "raw_round_trips_per_s": base,
                    "vs_raw": median / base,
                    "vs_one_shard": median / one,
                    "samples": ours[k],
                    "raw_samples": raw,
                }
                print(json.dumps(cell), flush=True)
                rows.append(cell)
    print()
    print("| parameters | workers | shards | round trips/s | raw socket | vs raw | vs 1 shard |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['params']:,} | {r['workers']} | {r['shards']} | "
            f"{r['round_trips_per_s']:.1f} | {r['raw_round_trips_per_s']:.1f} | "
            f"{r['vs_raw']:.2f} | {r['vs_one_shard']:.2f} |"
        )


if __name__ == "__main__":
    main()

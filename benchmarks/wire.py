"""Wire benchmark matrix: commit_pull round trips/s vs the raw-socket ceiling.

Runs ``distkeras_async.bench.run_wire_benchmark`` (the code behind
``distkeras-async bench wire``) for several model sizes and worker counts, prints one JSON
object per configuration and a Markdown table for docs/benchmarks.md.

    python benchmarks/wire.py                      # 1M and 10M parameters, 1 and 2 workers
    python benchmarks/wire.py --params 100000000 --workers 1 --repeats 3
"""

from __future__ import annotations

import json

from distkeras_async.bench import matrix_arguments, run_wire_benchmark


def main() -> None:
    args = matrix_arguments(__doc__, workers=[1, 2])
    rows = []
    for params in args.params:
        for workers in args.workers:
            result = run_wire_benchmark(
                params, workers, duration=args.duration, repeats=args.repeats
            )
            print(json.dumps(result.to_dict()), flush=True)
            rows.append(result)
    print()
    print("| parameters | workers | raw socket (rt/s) | distkeras-async (rt/s) | ratio | MB/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.params:,} | {r.workers} | {r.baseline_round_trips_per_s:.1f} | "
            f"{r.round_trips_per_s:.1f} | {r.ratio:.2f} | {r.megabytes_per_s:,.0f} |"
        )


if __name__ == "__main__":
    main()

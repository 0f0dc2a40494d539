"""What TLS costs: ``commit_pull`` round trips over TLS against plain TCP, in the same run.

Both sides are the real ``ParameterServer`` (uvloop, DOWNPOUR) and real
``ParameterServerClient`` processes (``distkeras_async.bench.measure_server``); the only
difference is a TLS context on each end, with a self-signed ECDSA certificate for 127.0.0.1
made for the run (needs ``cryptography``, part of the ``test`` extra). The two alternate
``--repeats`` times and the medians are reported.

    python benchmarks/tls.py --params 1000000 10000000 --workers 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile


def main() -> None:
    from distkeras_async.bench import measure_server
    from distkeras_async.tls import write_self_signed_certificate

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="distkeras-tls-bench-") as folder:
        tls = write_self_signed_certificate(folder)
        for params in args.params:
            for workers in args.workers:
                plain, secure = [], []
                for _ in range(args.repeats):
                    plain.append(measure_server(params, workers, args.duration))
                    secure.append(measure_server(params, workers, args.duration, tls=tls))
                row = {
                    "params": params,
                    "workers": workers,
                    "plain_round_trips_per_s": statistics.median(plain),
                    "tls_round_trips_per_s": statistics.median(secure),
                    "samples": {"plain": plain, "tls": secure},
                }
                row["ratio"] = row["tls_round_trips_per_s"] / row["plain_round_trips_per_s"]
                print(json.dumps(row), flush=True)
                rows.append(row)
    print()
    print("| parameters | workers | plain TCP (round trips/s) | TLS (round trips/s) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['params']:,} | {row['workers']} | {row['plain_round_trips_per_s']:.1f} "
            f"| {row['tls_round_trips_per_s']:.1f} | {row['ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()

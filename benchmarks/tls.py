"""What TLS costs: ``commit_pull`` round trips over TLS, in the same run as two baselines.

Three measurements alternate ``--repeats`` times (medians reported):

* **plain** -- the real ``ParameterServer`` (uvloop, DOWNPOUR) and ``ParameterServerClient``
  processes over plain TCP (``distkeras_async.bench.measure_server``);
* **raw TLS** -- the TLS ceiling: the raw-socket baseline of ``bench wire`` (receive the
  update, add, send the center back; no framing, no checks) over blocking ``ssl`` sockets;
* **TLS** -- the real server and clients with a TLS context on each end.

The certificate is a self-signed ECDSA one for 127.0.0.1 made for the run
(``distkeras_async.tls``; needs ``cryptography``, part of the ``test`` extra).

    python benchmarks/tls.py --params 1000000 10000000 --workers 1 --repeats 5
"""

from __future__ import annotations

import json
import statistics
import tempfile


def main() -> None:
    from distkeras_async.bench import matrix_arguments, measure_baseline, measure_server
    from distkeras_async.tls import write_self_signed_certificate

    args = matrix_arguments(__doc__, workers=[1])
    rows = []
    with tempfile.TemporaryDirectory(prefix="distkeras-tls-bench-") as folder:
        tls = write_self_signed_certificate(folder)
        for params in args.params:
            for workers in args.workers:
                plain: list[float] = []
                raw: list[float] = []
                secure: list[float] = []
                for _ in range(args.repeats):
                    plain.append(measure_server(params, workers, args.duration))
                    raw.append(measure_baseline(params, workers, args.duration, tls=tls))
                    secure.append(measure_server(params, workers, args.duration, tls=tls))
                row = {
                    "params": params,
                    "workers": workers,
                    "plain_round_trips_per_s": statistics.median(plain),
                    "raw_tls_round_trips_per_s": statistics.median(raw),
                    "tls_round_trips_per_s": statistics.median(secure),
                    "samples": {"plain": plain, "raw_tls": raw, "tls": secure},
                }
                row["tls_vs_plain"] = row["tls_round_trips_per_s"] / row["plain_round_trips_per_s"]
                row["tls_vs_raw_tls"] = (
                    row["tls_round_trips_per_s"] / row["raw_tls_round_trips_per_s"]
                )
                print(json.dumps(row), flush=True)
                rows.append(row)
    print()
    print(
        "| parameters | workers | plain TCP | raw TLS ceiling | TLS | TLS / plain | TLS / raw TLS |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['params']:,} | {row['workers']} | {row['plain_round_trips_per_s']:.1f} "
            f"| {row['raw_tls_round_trips_per_s']:.1f} | {row['tls_round_trips_per_s']:.1f} "
            f"| {row['tls_vs_plain']:.2f} | {row['tls_vs_raw_tls']:.2f} |"
        )


if __name__ == "__main__":
    main()

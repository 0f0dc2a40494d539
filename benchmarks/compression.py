"""Compressed commits: round trips/s and bytes per dtype, and what they do to accuracy.

Wire: one client process does ``commit_pull`` against a real ParameterServer (DOWNPOUR) for
``--duration`` seconds per dtype, the dtypes alternating ``--repeats`` times in the same run;
medians, and each setting's ratio to float32. Each compressed dtype runs for the commits
only (the center returns as float32) and both ways (``pull_dtype``: after the connection's
first reply, the center's change returns in that dtype). The update is random (a constant
one would make every dtype look exact); the encoding with error feedback is included.
With ``--link-mbit`` the client's connection runs through an emulated link
(``distkeras_async.bench.Link``), where the bytes, not the CPU, are the limit.

Accuracy (``--accuracy``): DOWNPOUR with 2 workers on scikit-learn's digits on Spark
``local[2]`` (the demo's settings, ``--epochs`` epochs), once per setting, repeated; the test
accuracy of the returned model.

    python benchmarks/compression.py --params 1000000 10000000
    python benchmarks/compression.py --params 10000000 --link-mbit 1000 --duration 6
    python benchmarks/compression.py --accuracy --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

from distkeras_async.algorithm import COMMIT_DTYPES
from distkeras_async.bench import measure_server
from distkeras_async.wire.compression import commit_bytes

# (commit dtype, pull dtype): each compressed dtype for the commits only (the center returns
# as float32), then both ways (the center's change returns in that dtype too).
SETTINGS = [(dtype, "float32") for dtype in COMMIT_DTYPES]
SETTINGS += [(dtype, dtype) for dtype in COMMIT_DTYPES if dtype != "float32"]


def wire(params: list[int], duration: float, repeats: int, link_mbit: float | None) -> None:
    """Print round trips/s per setting against float32, for each model size."""
    print("| parameters | commit | pull | bytes a round trip | round trips/s | vs float32 | runs |")
    print("|---:|---|---|---:|---:|---:|---|")
    for n in params:
        runs: dict[tuple[str, str], list[float]] = {setting: [] for setting in SETTINGS}
        for _ in range(repeats):
            for commit, pull in SETTINGS:
                runs[commit, pull].append(
                    measure_server(
                        n, 1, duration, commit_dtype=commit, pull_dtype=pull, link_mbit=link_mbit
                    )
                )
        base = statistics.median(runs["float32", "float32"])
        for commit, pull in SETTINGS:
            median = statistics.median(runs[commit, pull])
            spread = ", ".join(f"{v:.1f}" for v in runs[commit, pull])
            # After a connection's first reply, a change of the center is as big as a commit.
            size = commit_bytes(commit, [n]) + commit_bytes(pull, [n])
            print(
                f"| {n:,} | {commit} | {pull} | {size:,} | {median:.1f} | "
                f"{median / base:.2f} | {spread} |",
                flush=True,
            )


def accuracy(epochs: int, repeats: int) -> None:
    """Print the digits test accuracy of DOWNPOUR per commit (and pull) dtype."""
    from distkeras_async.datasets import digits, digits_mlp
    from distkeras_async.demo import make_trainer, start_spark
    from distkeras_async.spark import warm_up

    spark = start_spark(2)
    data = digits(spark)
    warm_up(data.train, 2)
    runs: dict[tuple[str, str], list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(repeats):
        for commit, pull in SETTINGS:
            trainer = make_trainer(
                "DOWNPOUR",
                digits_mlp(),
                workers=2,
                epochs=epochs,
                progress=False,
                commit_dtype=commit,
                pull_dtype=pull,
            )
            runs[commit, pull].append(data.accuracy(trainer.train(data.train)))
    print(f"| commit | pull | test accuracy (median of {repeats}) | runs |")
    print("|---|---|---:|---|")
    for (commit, pull), values in runs.items():
        spread = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {commit} | {pull} | {statistics.median(values):.3f} | {spread} |")
    spark.stop()


def main() -> None:
    """Run the wire table, or the accuracy table with ``--accuracy``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--link-mbit",
        type=float,
        help="run the client through an emulated link of this many Mbit/s each way",
    )
    args = parser.parse_args()
    if args.accuracy:
        accuracy(args.epochs, args.repeats)
    else:
        if args.link_mbit:
            print(f"emulated link: {args.link_mbit:g} Mbit/s each way")
        wire(args.params, args.duration, args.repeats, args.link_mbit)


if __name__ == "__main__":
    main()

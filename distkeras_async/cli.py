"""The ``distkeras-async`` command.

Subcommands:

* ``algorithms`` -- list the registered algorithms with their hyperparameters and defaults;
* ``bench wire`` -- ``commit_pull`` round trips per second against a raw-socket ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from distkeras_async import registry
from distkeras_async.errors import AlgorithmError


def _cmd_algorithms(args: argparse.Namespace) -> int:
    names = registry.available()
    if args.json:
        out = {}
        for name in names:
            cls = registry.get(name)
            out[name] = {
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "synchronous": cls.synchronous,
                "hyperparameters": {k: v.default for k, v in cls.hyperparameters.items()},
            }
        print(json.dumps(out, indent=2))
        return 0
    for name in names:
        try:
            cls = registry.get(name)
        except AlgorithmError as exc:
            print(f"{name:<12} (unavailable: {exc})")
            continue
        kind = "synchronous" if cls.synchronous else "asynchronous"
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<12} {kind:<13} {summary}")
        for key, spec in cls.hyperparameters.items():
            print(f"    {key:<22} default {spec.default!r:<8} {spec.doc}")
    return 0


def _cmd_bench_wire(args: argparse.Namespace) -> int:
    from distkeras_async.bench import run_wire_benchmark

    result = run_wire_benchmark(
        args.params, args.workers, duration=args.duration, repeats=args.repeats
    )
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(
        f"model: {result.params:,} float32 parameters ({result.params * 4 / 1e6:.1f} MB), "
        f"{result.workers} worker(s), median of {result.repeats} x {result.duration_s:g} s"
    )
    print(f"  raw-socket baseline : {result.baseline_round_trips_per_s:10.1f} round trips/s")
    print(
        f"  distkeras-async     : {result.round_trips_per_s:10.1f} round trips/s "
        f"({result.megabytes_per_s:,.0f} MB/s moved)"
    )
    print(f"  ratio               : {result.ratio:10.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``distkeras-async`` command."""
    parser = argparse.ArgumentParser(
        prog="distkeras-async",
        description="Distributed Keras training on Spark through an asyncio parameter server.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    algos = sub.add_parser("algorithms", help="list registered algorithms and hyperparameters")
    algos.add_argument("--json", action="store_true", help="print JSON")
    algos.set_defaults(func=_cmd_algorithms)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    wire = bench_sub.add_parser("wire", help="commit_pull round trips/s vs a raw-socket ceiling")
    wire.add_argument("--params", type=_positive_int, required=True, help="float32 parameters")
    wire.add_argument("--workers", type=_positive_int, default=1, help="client processes")
    wire.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    wire.add_argument("--repeats", type=_positive_int, default=3, help="alternating repeats")
    wire.add_argument("--json", action="store_true", help="print one JSON object")
    wire.set_defaults(func=_cmd_bench_wire)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (AlgorithmError, OSError, ValueError) as exc:
        print(f"distkeras-async: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``distkeras-async`` command.

Subcommands:

* ``demo`` -- train digits on an embedded Spark with a trainer (or ``--all``) and print a table;
* ``serve`` -- a standalone parameter server for a ``.keras`` model;
* ``algorithms`` -- list the registered algorithms with their hyperparameters and defaults;
* ``bench wire`` -- ``commit_pull`` round trips per second against a raw-socket ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from distkeras_async import checks, registry
from distkeras_async.algorithm import COMMIT_DTYPES
from distkeras_async.errors import AlgorithmError, DistKerasError
from distkeras_async.serve import add_arguments as add_serve_arguments
from distkeras_async.wire import auth


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
        args.params,
        args.workers,
        duration=args.duration,
        repeats=args.repeats,
        commit_dtype=args.commit_dtype,
        shards=args.shards,
        pull_dtype=args.pull_dtype,
    )
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(
        f"model: {result.params:,} float32 parameters ({result.params * 4 / 1e6:.1f} MB), "
        f"{result.workers} worker(s), {result.shards} shard(s), "
        f"median of {result.repeats} x {result.duration_s:g} s"
    )
    print(f"  raw-socket baseline : {result.baseline_round_trips_per_s:10.1f} round trips/s")
    print(
        f"  distkeras-async     : {result.round_trips_per_s:10.1f} round trips/s "
        f"({result.megabytes_per_s:,.0f} MB/s moved)"
    )
    print(f"  ratio               : {result.ratio:10.3f}")
    if result.speedup_vs_one_shard is not None:
        print(
            f"  {result.shards} shards vs 1       : {result.speedup_vs_one_shard:10.3f} "
            f"(one shard: {result.one_shard_round_trips_per_s:.1f} round trips/s)"
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from distkeras_async.demo import TRAINER_NAMES, run_demo

    names = TRAINER_NAMES if args.all else [args.trainer]
    run_demo(
        names,
        args.workers,
        args.epochs,
        port=args.port,
        progress=False if args.no_progress else None,
        plot_path=args.plot,
        backend=args.backend,
    )
    return 0


SECRET_ENV = "DISTKERAS_ASYNC_SECRET"  # noqa: S105 - the variable's name, not a secret


def read_secret(secret_file: str | None) -> bytes:
    """The run's secret, hex-encoded in ``secret_file`` or in $DISTKERAS_ASYNC_SECRET.

    Raises:
        ValueError: if neither is given or the value is not hex of at least 16 bytes.
    """
    if secret_file:
        with open(secret_file, encoding="ascii") as handle:
            text, origin = handle.read().strip(), secret_file
    else:
        text, origin = os.environ.get(SECRET_ENV, "").strip(), f"${SECRET_ENV}"
        if not text:
            raise ValueError(f"give the secret with --secret-file or ${SECRET_ENV} (hex)")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"the secret in {origin} is not hexadecimal") from None
    return auth.check_secret(secret)


def _parse_settings(items: Sequence[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            settings[key] = json.loads(value)  # numbers, booleans; never eval
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from distkeras_async import serve

    secret = read_secret(args.secret_file)
    algorithm = registry.resolve(args.algorithm, **_parse_settings(args.set))
    return serve.run(args, secret, algorithm)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``distkeras-async`` command."""
    parser = argparse.ArgumentParser(
        prog="distkeras-async",
        description="Distributed Keras training on Spark through an asyncio parameter server.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train digits on an embedded Spark and compare trainers")
    demo.add_argument("--trainer", default="DOWNPOUR", help="trainer class name (default DOWNPOUR)")
    demo.add_argument("--all", action="store_true", help="run every trainer in turn")
    demo.add_argument("--workers", type=_positive_int, default=2, help="workers (default 2)")
    demo.add_argument("--epochs", type=_positive_int, help="epochs (default: per trainer)")
    demo.add_argument("--port", type=int, default=0, help="parameter server port (0: any free)")
    demo.add_argument("--plot", metavar="PATH", help="write a PNG of loss and accuracy")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        help="the workers' Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    demo.set_defaults(func=_cmd_demo)

    serve = sub.add_parser("serve", help="a standalone parameter server for a .keras model")
    add_serve_arguments(serve, _positive_int)
    serve.add_argument("--secret-file", help=f"file with the hex secret (else ${SECRET_ENV})")
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an algorithm hyperparameter (repeatable)",
    )
    serve.set_defaults(func=_cmd_serve)

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
    wire.add_argument(
        "--commit-dtype",
        choices=COMMIT_DTYPES,
        default="float32",
        help="the dtype commits travel in (the raw-socket baseline sends float32)",
    )
    wire.add_argument(
        "--pull-dtype",
        choices=COMMIT_DTYPES,
        default="float32",
        help="the dtype the center's change travels back in after a connection's first reply",
    )
    wire.add_argument(
        "--shards",
        type=_positive_int,
        default=1,
        help="server processes the center is split across (>1 also measures one shard)",
    )
    wire.add_argument("--json", action="store_true", help="print one JSON object")
    wire.set_defaults(func=_cmd_bench_wire)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    try:
        return checks.positive_int(value, text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (DistKerasError, OSError, ValueError, TypeError) as exc:
        print(f"distkeras-async: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

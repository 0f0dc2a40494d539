"""``distkeras-async serve``: a standalone parameter server for workers you run yourself.

It loads a ``.keras`` model, serves its weights as the center with a registered algorithm,
prints ``listening on HOST:PORT`` when workers may connect, a statistics line every
``--stats-interval`` seconds, and on exit how many updates it applied (and the trained model,
with ``--output``). See ``docs/serve.md`` for a complete external worker.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from distkeras_async.options import (
    CheckpointOptions,
    Declared,
    RunOptions,
    ServerOptions,
    Timeouts,
    bind,
    declared,
    values,
)
from distkeras_async.options.declare import Check
from distkeras_async.server.factory import make_server
from distkeras_async.server.stats import ServerStats

SERVE_FLAGS = (RunOptions, ServerOptions, Timeouts, CheckpointOptions)
"""The option groups whose declared flags (``spec.flag``) ``serve`` takes."""

# Where ``serve`` departs from an option's declaration: a standalone server listens on
# loopback and any free port by default, runs in one process unless told, and has no Spark
# to count the workers for it.
SERVE_OVERRIDES: dict[str, dict[str, Any]] = {
    "num_workers": {"required": True, "help": "number of workers (ids 0 .. N-1)"},
    "master_port": {"default": 0, "help": "port (0: any free)"},
    "bind_host": {"default": "127.0.0.1", "help": "address to listen on (default 127.0.0.1)"},
    "shards": {
        "default": 1,
        "help": "server processes the center is split across (default 1); shard i listens "
        "on --port + i (or any free port with --port 0), and workers connect to all of them",
    },
}


def add_arguments(serve: argparse.ArgumentParser, positive_int: Callable[[str], int]) -> None:
    """The ``serve`` command's options.

    Every declared option with a ``flag`` (:mod:`distkeras_async.options`) becomes a flag
    here, parsed and checked as declared, its value stored under the option's name
    (``--workers`` in ``args.num_workers``); the rest are ``serve``'s own.

    Args:
        serve: the ``serve`` subcommand's parser.
        positive_int: the command line's parser of positive ints (it accepts ``1e3``).
    """
    serve.add_argument("--model", required=True, help="the initial model (.keras file)")
    serve.add_argument("--algorithm", default="downpour", help="registered algorithm name")
    for item in declared(*SERVE_FLAGS):
        if item.spec.flag is not None:
            serve.add_argument(item.spec.flag, **flag_arguments(item, positive_int))
    serve.add_argument("--output", help="save the trained model here (.keras) on exit")
    serve.add_argument("--tls-cert", help="PEM certificate (chain): serve TLS only")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--resume-from", help="start from this checkpoint's center and version")
    serve.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="seconds between statistics lines (0: none)",
    )
    serve.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit once every worker said goodbye",
    )
    serve.add_argument(
        "--worker-timeout",
        type=float,
        default=60.0,
        help="with --exit-when-done: fail when a worker that left without goodbye has not "
        "come back within this many seconds (default 60)",
    )


def flag_arguments(item: Declared, positive_int: Callable[[str], int]) -> dict[str, Any]:
    """``add_argument``'s keywords for a declared option: its parser, default and help."""
    check, flag = item.spec.check, str(item.spec.flag)
    parse: Callable[[str], Any]
    if item.kind not in (int, float, str):
        # bool("false") is True: a flag of another type needs a parser written for it.
        raise TypeError(f"serve cannot parse {flag} ({item.annotation}) from the command line")
    if item.kind is int and check in (values.positive_int, values.optional_positive_int):
        parse = positive_int
    else:
        parse = _checked(item.kind, check)
    help_text = item.spec.doc
    if item.default is not None and "default" not in help_text:
        help_text += " (default %(default)s)"
    arguments: dict[str, Any] = {
        "dest": item.name,
        "metavar": flag.lstrip("-").replace("-", "_").upper(),  # not the option's name
        "type": parse,
        "default": item.default,
        "help": help_text,
    }
    arguments.update(SERVE_OVERRIDES.get(item.name, {}))
    if arguments.get("required"):
        del arguments["default"]
    return arguments


def _checked(kind: type, check: Check | None) -> Callable[[str], Any]:
    """A flag's parser: the text as ``kind``, then the option's declared check."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
            return value if check is None else check(value, "the value")
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def option_groups(args: argparse.Namespace, *groups: type[Any]) -> list[Any]:
    """The option groups of ``groups``, built from the parsed flags (declared defaults else)."""
    flags = {
        item.name: getattr(args, item.name)
        for item in declared(*groups)
        if item.spec.flag is not None
    }
    bound, _ = bind(flags, groups)
    return [bound[group] for group in groups]


def tls_files(cert: str | None, key: str | None) -> tuple[str, str] | None:
    """``(certificate, key)`` from ``--tls-cert``/``--tls-key``, or None for plain TCP.

    Raises:
        ValueError: if only one of the two is given.
    """
    if (cert is None) != (key is None):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    return None if cert is None or key is None else (cert, key)


def stats_line(stats: ServerStats, previous: tuple[float, int], workers: int) -> str:
    """One line of statistics: updates and their rate, workers, the latest reported loss."""
    then, version = previous
    rate = (stats.version - version) / max(time.monotonic() - then, 1e-9)
    connected = sum(w.connected for w in stats.workers.values())
    finished = sum(w.finished for w in stats.workers.values())
    losses = [w.last_loss for w in stats.workers.values() if w.last_loss is not None]
    loss = f", latest loss {sum(losses) / len(losses):.4f}" if losses else ""
    return (
        f"{stats.version} updates ({rate:.1f}/s), {connected} worker(s) connected, "
        f"{finished}/{workers} finished{loss}"
    )


def gone_workers(stats: ServerStats, timeout: float, now: float) -> list[str]:
    """Workers that left without goodbye and stayed away longer than ``timeout`` seconds."""
    return [
        f"worker {w} (attempt {s.attempt}, {s.commits} commit(s)) left without goodbye "
        f"{now - s.disconnected_at:.0f} s ago"
        for w, s in sorted(stats.workers.items())
        if not s.finished
        and not s.connected
        and s.disconnected_at
        and now - s.disconnected_at > timeout
    ]


def run(args: argparse.Namespace, secret: bytes, algorithm: Any) -> int:
    """Serve until every worker finished (``--exit-when-done``), a signal, or a failure."""
    tls = tls_files(args.tls_cert, args.tls_key)
    import keras  # after the cheap checks: importing TensorFlow takes seconds

    # CheckpointOptions gives a path without a period its 60 s default, as the trainers do.
    timeouts, checkpoints = option_groups(args, Timeouts, CheckpointOptions)
    model = keras.saving.load_model(args.model, compile=False)
    server = make_server(
        model.get_weights(),
        algorithm,
        shards=args.shards,
        num_workers=args.num_workers,
        secret=secret,
        host=args.bind_host,
        port=args.master_port,
        ssl_context=tls,
        timeouts=timeouts,
        checkpoints=checkpoints,
        resume_from=args.resume_from,
    )
    server.start()
    scheme = "TLS" if tls is not None else "TCP"
    ports = ",".join(str(p) for p in server.ports)
    shards = f", {len(server.ports)} shards" if len(server.ports) > 1 else ""
    print(
        f"listening on {args.bind_host}:{ports} ({scheme}, {server.algorithm!r}, "
        f"{args.num_workers} workers{shards}, version {server.version})",
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    failure: str | None = None
    previous = (time.monotonic(), server.version)
    try:
        while not stop.wait(0.2):
            stats = server.stats()
            if args.stats_interval and time.monotonic() - previous[0] >= args.stats_interval:
                print(stats_line(stats, previous, args.num_workers), flush=True)
                previous = (time.monotonic(), stats.version)
            if server.failure:
                failure = server.failure
                break
            if not args.exit_when_done:
                continue
            gone = gone_workers(stats, args.worker_timeout, time.time())
            if gone:
                failure = "; ".join(gone) + f" (--worker-timeout {args.worker_timeout:g} s)"
                break
            if sum(w.finished for w in stats.workers.values()) >= args.num_workers:
                break
    finally:
        weights = server.center
        stats = server.stats()
        if args.checkpoint_path:
            server.checkpoint()
        server.stop()
    print(f"stopped after {stats.version} updates from {len(stats.workers)} worker(s)", flush=True)
    if args.output:
        model.set_weights(weights)
        model.save(args.output)
        print(f"trained weights saved to {args.output}", flush=True)
    if failure:
        print(f"distkeras-async: the run failed: {failure}", file=sys.stderr)
        return 1
    return 0

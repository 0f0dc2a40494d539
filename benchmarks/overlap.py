"""Overlapped exchange: one worker's samples/s against plain ``model.fit``, with and without.

For MLPs of about 1M and 10M float32 parameters on random data (``--rows`` rows, 10
classes, batch ``--batch-size``, one TensorFlow thread), in this process:

- plain ``model.fit`` (the ceiling);
- the worker's real loop (``WorkerSession`` driven from ``fit``, DOWNPOUR, communication
  window ``--window``) against a parameter server in its own process, each exchange
  waiting for the server;
- the same with the exchange overlapped (``OverlappedClient``, what ``overlap=True`` runs).

Each worker way runs over loopback and over an emulated link of ``--link-mbit`` Mbit/s: a
relay process that paces the bytes each way (this machine has no ``netem``). On loopback
the "network" is memory copies by the same CPU cores that train, so there is little to
overlap; on a link the exchange waits for the wire, as on a cluster.

All ways are timed from the end of the first local step to the end of the last (start-up
and tracing excluded), alternating, medians of ``--repeats``, each as a ratio to ``fit``.

    python benchmarks/overlap.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

# (inputs, hidden units): Dense(inputs -> hidden) + Dense(hidden -> 10).
SIZES = {"1M": (240, 4000), "10M": (1000, 9900)}


# --------------------------------------------------------------------------- the ways


def mlp(inputs: int, hidden: int) -> Any:
    """An MLP of ``inputs * hidden + hidden * 10`` weights (plus biases)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def stamps_callback(stamps: list[float], session: Any = None) -> Any:
    """Records the end of every step (and drives ``session`` as the Keras worker does)."""
    import keras

    class Stamp(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if session is not None:
                session.step_done({k: float(v) for k, v in (logs or {}).items()})
            stamps.append(time.perf_counter())

    return Stamp()


def samples_per_second(stamps: list[float], batch_size: int) -> float:
    """Samples per second from the end of the first step to the end of the last."""
    return (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])


def run_fit(size: str, x: np.ndarray, y: np.ndarray, args: Any) -> float:
    """Plain ``model.fit``: samples/s."""
    stamps: list[float] = []
    model = mlp(*SIZES[size])
    model.fit(
        x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
        callbacks=[stamps_callback(stamps)],
    )  # fmt: skip
    return samples_per_second(stamps, args.batch_size)


def run_worker(
    size: str, x: np.ndarray, y: np.ndarray, args: Any, *, overlap: bool, mbit: float | None
) -> float:
    """The worker's loop against a server process (through a link when ``mbit``)."""
    from distkeras_async import registry
    from distkeras_async.bench import Link
    from distkeras_async.layout import Layout
    from distkeras_async.server.sharded import ShardedParameterServer
    from distkeras_async.wire.auth import new_secret
    from distkeras_async.worker.client import ParameterServerClient
    from distkeras_async.worker.exchange import WorkerSession
    from distkeras_async.worker.local_model import KerasLocalModel
    from distkeras_async.worker.overlap import OverlappedClient

    model = mlp(*SIZES[size])
    secret = new_secret()
    window = args.window
    # One shard: an ordinary server, but in its own process (as the driver is on a cluster).
    server = ShardedParameterServer(
        model.get_weights(), "downpour", num_workers=1, secret=secret, shards=1,
        communication_window=window,
    )  # fmt: skip
    server.start()
    link = None if mbit is None else Link(server.ports[0], mbit)
    port = server.ports[0] if link is None else link.port
    stamps: list[float] = []
    try:
        with ParameterServerClient("127.0.0.1", port, secret, 0, timeout=300) as client:
            handle: Any = OverlappedClient(client) if overlap else client
            algorithm = registry.resolve("downpour", communication_window=window)
            local = KerasLocalModel(model, Layout.of(model.get_weights()))
            session = WorkerSession(local, algorithm, handle)
            session.start()
            model.fit(
                x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                callbacks=[stamps_callback(stamps, session)],
            )  # fmt: skip
            session.finish()
            if overlap:
                handle.wait()
    finally:
        server.stop()
        if link is not None:
            link.close()
    return samples_per_second(stamps, args.batch_size)


def main() -> None:
    """Measure every size and way; print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--link-mbit", type=float, default=1000.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from distkeras_async.worker.backend import limit_threads

    limit_threads(1)
    print(f"# {os.cpu_count()} cores; emulated link {args.link_mbit:g} Mbit/s each way")
    print(f"| parameters | way | samples/s (median of {args.repeats}) | vs `fit` | runs |")
    print("|---:|---|---:|---:|---|")
    for size in args.sizes:
        inputs, _ = SIZES[size]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.rows, inputs)).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, args.rows)]
        link = f"{args.link_mbit:g} Mbit/s link"
        ways: dict[str, dict[str, Any]] = {
            "`fit`": {},
            "waiting, loopback": {"overlap": False, "mbit": None},
            "overlapped, loopback": {"overlap": True, "mbit": None},
            f"waiting, {link}": {"overlap": False, "mbit": args.link_mbit},
            f"overlapped, {link}": {"overlap": True, "mbit": args.link_mbit},
        }
        runs: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, options in ways.items():
                if options:
                    runs[name].append(run_worker(size, x, y, args, **options))
                else:
                    runs[name].append(run_fit(size, x, y, args))
        base = statistics.median(runs["`fit`"])
        params = mlp(*SIZES[size]).count_params()
        for name, values in runs.items():
            median = statistics.median(values)
            spread = ", ".join(f"{v:.0f}" for v in values)
            print(
                f"| {params:,} | {name} | {median:.0f} | {median / base:.2f} | {spread} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

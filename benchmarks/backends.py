"""Worker throughput on every Keras backend, against that backend's own ``model.fit``.

For each backend, a fresh Python process (``KERAS_BACKEND`` is read once per process) trains
scikit-learn's digits (1,797 rows, a 64-64-10 MLP, batch 32, shuffled, 10 epochs, two CPU
threads) two ways, alternating: plain ``model.fit`` on numpy arrays, and one distkeras-async
worker (DOWNPOUR, ``communication_window=5``, so exchanges with a real parameter server on
127.0.0.1 are included). Both are timed from the end of the first local step to the end of
the last (start-up and tracing excluded); medians over ``--repeats``.

    python benchmarks/backends.py                     # the table in docs/backends.md
    python benchmarks/backends.py --backends jax --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

EPOCHS = 10
BATCH = 32


def _digits() -> tuple[Any, Any]:
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16).astype(np.float32), np.eye(10, dtype=np.float32)[data.target]


def _model() -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def plain_fit(
    x: Any, y: Any, model: Callable[[], Any] = _model, batch: int = BATCH, epochs: int = EPOCHS
) -> float:
    """Samples/s of ``model.fit`` between the first and the last step."""
    import keras

    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            stamps.append(time.perf_counter())

    fitted = model()
    fitted.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    fitted.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[Stamp()])
    return (len(stamps) - 1) * batch / (stamps[-1] - stamps[0])


def worker(
    x: Any,
    y: Any,
    model: Callable[[], Any] = _model,
    batch: int = BATCH,
    epochs: int = EPOCHS,
) -> tuple[float, str]:
    """Samples/s of one distkeras-async worker between its first and its last step.

    Returns:
        The samples/s, and the device the worker's model trained on.
    """
    import pyarrow as pa

    from distkeras_async import ParameterServer, new_secret
    from distkeras_async.worker.keras_worker import new_worker
    from distkeras_async.worker.partition import spool
    from distkeras_async.worker.plan import Endpoint, WorkerPlan
    from distkeras_async.worker.serialization import describe_model

    master = model()
    spec = describe_model(master, "adam", "categorical_crossentropy", ["accuracy"])
    secret = new_secret()
    server = ParameterServer(
        master.get_weights(), "downpour", num_workers=1, secret=secret, host="127.0.0.1", port=0
    )
    port = server.start()
    plan = WorkerPlan.create(
        spec.to_json(),
        "downpour",
        Endpoint("127.0.0.1", (port,), secret),
        hyperparameters={"communication_window": 5},
        epochs=epochs,
        batch_size=batch,
        shuffle=True,
        backend=os.environ["KERAS_BACKEND"],
    )
    rows = pa.RecordBatch.from_arrays(
        [
            pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
            pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), y.shape[1]),
        ],
        names=["features", "label"],
    )
    trainer = new_worker(plan, 0, 0, task_cores=2)
    try:
        with spool([rows], ["features", "label"]) as partition:
            history = trainer.train(partition)
    finally:
        server.stop()
    sps = (len(history) - 1) * batch / (history[-1].timestamp - history[0].timestamp)
    return sps, trainer.device


def measure(repeats: int) -> dict[str, Any]:
    """In this process (its backend): both ways, alternating; medians and their ratio."""
    from distkeras_async.worker.backend import limit_threads

    limit_threads(2)
    x, y = _digits()
    plain_fit(x[:256], y[:256])  # warm-up: the runtime started once
    plain, ours = [], []
    for _ in range(repeats):
        plain.append(plain_fit(x, y))
        ours.append(worker(x, y)[0])
    import keras

    return {
        "backend": keras.backend.backend(),
        "fit_sps": round(statistics.median(plain)),
        "worker_sps": round(statistics.median(ours)),
        "ratio": round(statistics.median(ours) / statistics.median(plain), 3),
        "fit_runs": [round(v) for v in plain],
        "worker_runs": [round(v) for v in ours],
    }


def main() -> None:
    """Measure each backend in its own process and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.repeats)))
        return
    print("| backend | `model.fit` | worker | ratio |")
    print("|---|---:|---:|---:|")
    for backend in args.backends.split(","):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        out = subprocess.run(
            [sys.executable, __file__, "--measure", "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
            check=False,
        )
        if out.returncode:
            raise RuntimeError(f"{backend} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['backend']} | {r['fit_sps']:,} samples/s | {r['worker_sps']:,} samples/s | "
            f"{r['ratio']} |",
            flush=True,
        )
        print(f"<!-- {json.dumps(r)} -->", flush=True)


if __name__ == "__main__":
    main()

"""A worker's peak memory against its partition's size, streamed and in memory.

Each measurement runs in a fresh Python process (``probe``): it imports Keras, starts a
parameter server on 127.0.0.1, warms a model up, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), and then hands one worker a partition of generated float32 rows,
arriving as Arrow record batches of 10,000 rows as Spark sends them. It prints the resident
set before the partition arrived and the peak while it was spooled and trained (VmHWM, file
pages of the mapped spool included), in MiB, as JSON.

    python benchmarks/stream_memory.py                # the table in docs/benchmarks.md
    python benchmarks/stream_memory.py probe --mb 400 --limit 0

The table's partitions: 0.1, 1 and 4 GB of features (256 float32 per row), streamed
(``in_memory_limit=0``) and, up to 1 GB, held in memory, one epoch at batch size 1024.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

WIDTH = 256
ARROW_BATCH = 10_000


def _status(field: str) -> float:
    """A /proc/self/status memory field, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _arrow(x: Any, y: Any) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [
            pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
            pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), y.shape[1]),
        ],
        names=["features", "label"],
    )


def _batches(rows: int, width: int = WIDTH, seed: int = 0) -> Iterator[Any]:
    """Generated rows whose label is the first feature's decile, as Arrow batches."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for start in range(0, rows, ARROW_BATCH):
        count = min(ARROW_BATCH, rows - start)
        x = rng.random((count, width), dtype=np.float32)
        y = np.zeros((count, 10), np.float32)
        y[np.arange(count), (x[:, 0] * 10).astype(int)] = 1.0
        yield _arrow(x, y)


def _digits() -> Iterator[Any]:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[digits.target]
    for start in range(0, len(x), ARROW_BATCH):
        yield _arrow(x[start : start + ARROW_BATCH], y[start : start + ARROW_BATCH])


def _model(width: int, hidden: int) -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def train_once(
    batches: Iterator[Any],
    *,
    width: int,
    hidden: int,
    limit: int,
    epochs: int,
    batch_size: int,
    reset_peak: bool = False,
) -> dict[str, Any]:
    """One worker (DOWNPOUR, window 20) trains the partition that ``batches`` stream.

    Returns:
        ``baseline_mb`` and ``peak_mb`` (resident before, peak after), ``streamed``,
        ``seconds`` (the whole worker: spool, checks, connection, training) and
        ``step_seconds`` (from the end of the first local step to the end of the last).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import numpy as np

    from distkeras_async import ParameterServer, new_secret
    from distkeras_async.worker.backend import limit_threads
    from distkeras_async.worker.keras_worker import train_worker
    from distkeras_async.worker.partition import spool
    from distkeras_async.worker.plan import Endpoint, WorkerPlan
    from distkeras_async.worker.serialization import describe_model

    limit_threads(2)
    master = _model(width, hidden)
    spec = describe_model(master, "adam", "categorical_crossentropy", ["accuracy"])
    # Warm-up: the same kind of model traced once, so the baseline holds TensorFlow's runtime.
    warm = _model(width, hidden)
    warm.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = np.zeros((batch_size, width), np.float32), np.zeros((batch_size, 10), np.float32)
    warm.fit(x, y, batch_size=batch_size, verbose=0)
    secret = new_secret()
    server = ParameterServer(
        master.get_weights(), "downpour", num_workers=1, secret=secret, host="127.0.0.1", port=0
    )
    port = server.start()
    plan = WorkerPlan.create(
        spec.to_json(),
        "downpour",
        Endpoint("127.0.0.1", (port,), secret),
        hyperparameters={"communication_window": 20},
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        in_memory_limit=limit,
    )
    try:
        if reset_peak:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset VmHWM to the current resident set
        baseline = _status("VmRSS")
        began = time.perf_counter()
        with spool(batches, ["features", "label"], limit=limit) as partition:
            streamed = not partition.in_memory
            rows = partition.num_rows
            history = train_worker(plan, 0, 0, partition, task_cores=2)
        seconds = time.perf_counter() - began
    finally:
        server.stop()
    assert len(history) == epochs * -(-rows // batch_size), "not every batch was trained"
    return {
        "rows": rows,
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(_status("VmHWM"), 1),
        "streamed": streamed,
        "seconds": round(seconds, 3),
        "step_seconds": round(history[-1].timestamp - history[0].timestamp, 3),
    }


def probe(mb: float, limit: int, epochs: int = 1, batch_size: int = 1024) -> dict[str, Any]:
    """Train one worker on ``mb`` MiB of generated features; its memory and time."""
    rows = int(mb * 2**20 / (WIDTH * 4))
    result = train_once(
        _batches(rows),
        width=WIDTH,
        hidden=32,
        limit=limit,
        epochs=epochs,
        batch_size=batch_size,
        reset_peak=True,
    )
    return {**result, "partition_mb": round(rows * (WIDTH + 10) * 4 / 2**20, 1)}


def predict_probe(mb: float) -> dict[str, Any]:
    """Predict ``mb`` MiB of generated rows with the executors' predict task; its memory.

    The task is :class:`~distkeras_async.spark.ModelPredictor`'s own, run in this process on
    Arrow batches as Spark streams them.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import pyarrow as pa

    from distkeras_async.spark import predictor as predicting

    model = _model(WIDTH, 32)
    shipped = predicting.ModelPredictor(model, batch_size=1024)
    task = predicting._predict_task(
        shipped._config,
        shipped._key,
        shipped._weights,
        shipped._layout.to_wire(),
        shipped.batch_size,
        shipped.custom_objects,
    )
    rows = int(mb * 2**20 / (WIDTH * 4))

    def inputs(count: int) -> Iterator[Any]:
        for batch in _batches(count):
            yield pa.RecordBatch.from_arrays([batch.column(0)], names=[predicting._FEATURES])

    for _ in task(inputs(ARROW_BATCH)):  # warm-up: the model built and traced once
        pass
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    baseline = _status("VmRSS")
    began = time.perf_counter()
    predicted = sum(out.num_rows for out in task(inputs(rows)))
    assert predicted == rows
    return {
        "rows": rows,
        "partition_mb": round(rows * WIDTH * 4 / 2**20, 1),
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(_status("VmHWM"), 1),
        "seconds": round(time.perf_counter() - began, 3),
    }


def throughput(repeats: int = 3, rows: int = 1_000_000) -> list[dict[str, Any]]:
    """Samples/s of the streamed path over the in-memory path, measured alternately.

    Digits (1,797 rows, 10 epochs) and ``rows`` generated rows of 64 features (1 epoch), a
    64-64-10 MLP, batch 32, shuffled, one worker (DOWNPOUR, window 20) in this process.
    """
    import statistics

    cases = [
        ("digits", _digits, 10),
        (f"{rows:,} rows", lambda: _batches(rows, width=64), 1),
    ]
    results = []
    for name, batches, epochs in cases:
        runs: dict[str, list[dict[str, Any]]] = {"memory": [], "streamed": []}
        for _ in range(repeats):
            for mode, limit in (("memory", 1 << 40), ("streamed", 0)):
                runs[mode].append(
                    train_once(
                        batches(), width=64, hidden=64, limit=limit, epochs=epochs, batch_size=32
                    )
                )
        total = runs["memory"][0]["rows"] * epochs

        def median(mode: str, key: str, runs: Any = runs, total: int = total) -> float:
            return statistics.median(total / r[key] for r in runs[mode])

        results.append(
            {
                "data": name,
                "memory_sps": round(median("memory", "seconds")),
                "streamed_sps": round(median("streamed", "seconds")),
                "ratio": round(median("streamed", "seconds") / median("memory", "seconds"), 3),
                "step_ratio": round(
                    median("streamed", "step_seconds") / median("memory", "step_seconds"), 3
                ),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def run_probe(mb: float, limit: int, epochs: int = 1, command: str = "probe") -> dict[str, Any]:
    """:func:`probe` (or ``predict``: :func:`predict_probe`) in a fresh Python process."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            command,
            *("--mb", str(mb), "--limit", str(limit)),
            *("--epochs", str(epochs)),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"the probe failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Print the probe's result, or the table of all sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", nargs="?", default="table", choices=["table", "probe", "predict", "throughput"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sizes", default="100,1024,4096")
    args = parser.parse_args()
    if args.command == "probe":
        print(json.dumps(probe(args.mb, args.limit, args.epochs)))
        return
    if args.command == "predict":
        print(json.dumps(predict_probe(args.mb)))
        return
    if args.command == "throughput":
        throughput(args.repeats, args.rows)
        return
    print("| partition | path | baseline RSS | peak RSS | growth | seconds |")
    print("|---|---|---|---|---|---|")
    for mb in [float(s) for s in args.sizes.split(",")]:
        modes = [("streamed", 0)] + ([("in memory", 1 << 40)] if mb <= 1024 else [])
        for name, limit in modes:
            r = run_probe(mb, limit)
            print(
                f"| {r['partition_mb']:,.0f} MiB | {name} | {r['baseline_mb']:,.0f} MiB | "
                f"{r['peak_mb']:,.0f} MiB | {r['peak_mb'] - r['baseline_mb']:,.0f} MiB | "
                f"{r['seconds']} |",
                flush=True,
            )
        r = run_probe(mb, 0, command="predict")
        print(
            f"| {r['partition_mb']:,.0f} MiB | predicted | {r['baseline_mb']:,.0f} MiB | "
            f"{r['peak_mb']:,.0f} MiB | {r['peak_mb'] - r['baseline_mb']:,.0f} MiB | "
            f"{r['seconds']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

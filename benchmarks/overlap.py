"""Overlapped exchange: one worker's samples/s against plain ``model.fit``, with and without.

On Spark ``local[2]``, for MLPs of about 1M and 10M float32 parameters on random data
(``--rows`` rows, 10 classes), batch ``--batch-size``, one TensorFlow thread:

- plain ``model.fit`` inside a Spark task on the same partition (the ceiling);
- DOWNPOUR with one worker (communication window ``--window``), exchanges waiting;
- the same with ``overlap=True``: each exchange runs in a background thread.

All three are timed the same way, from the end of the first local step to the end of the
last (start-up and tracing excluded), alternating, medians of ``--repeats``; each as a
ratio to ``fit`` in the same repeat.

    python benchmarks/overlap.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

# (inputs, hidden units): Dense(inputs -> hidden) + Dense(hidden -> 10).
SIZES = {"1M": (240, 4000), "10M": (1000, 9900)}


def mlp(inputs: int, hidden: int) -> Any:
    """An MLP of ``inputs * hidden + hidden * 10`` weights (plus biases)."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def plain_fit_task(inputs: int, hidden: int, epochs: int, batch_size: int) -> Any:
    """A Spark task running plain ``model.fit`` on its partition; yields step timestamps."""

    def task(batches: Iterator[Any]) -> Iterator[Any]:
        import keras
        import pyarrow as pa

        from distkeras_async.worker.backend import limit_threads
        from distkeras_async.worker.columns import batches_to_numpy

        limit_threads(1)
        x, y = batches_to_numpy(batches, ["features", "label"])
        model = mlp(inputs, hidden)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        stamps: list[float] = []

        class Stamp(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                stamps.append(time.time())

        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[Stamp()])
        yield pa.RecordBatch.from_pydict({"t": pa.array(stamps, pa.float64())})

    return task


def samples_per_second(stamps: list[float], batch_size: int) -> float:
    """Samples per second from the end of the first step to the end of the last."""
    stamps = sorted(stamps)
    return (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])


def frame(spark: Any, rows: int, inputs: int) -> Any:
    """Random features and one-hot labels as a one-partition DataFrame."""
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, inputs)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)]
    data = [(Vectors.dense(a), Vectors.dense(b)) for a, b in zip(x, y, strict=True)]
    return spark.createDataFrame(data, ["features", "label"]).repartition(1).cache()


def main() -> None:
    """Measure every size; print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from distkeras_async.demo import start_spark
    from distkeras_async.spark import prepare, warm_up
    from distkeras_async.trainers import DOWNPOUR

    spark = start_spark(2)
    print(f"| parameters | way | samples/s (median of {args.repeats}) | vs `fit` | runs |")
    print("|---:|---|---:|---:|---|")
    for size in args.sizes:
        inputs, hidden = SIZES[size]
        params = mlp(inputs, hidden).count_params()
        df = frame(spark, args.rows, inputs)
        warm_up(df, 1)
        one = prepare(df, ["features", "label"], 1)
        runs: dict[str, list[float]] = {"fit": [], "waiting": [], "overlapped": []}
        for _ in range(args.repeats):
            task = plain_fit_task(inputs, hidden, args.epochs, args.batch_size)
            stamps = [r.t for r in one.mapInArrow(task, "t double").collect()]
            runs["fit"].append(samples_per_second(stamps, args.batch_size))
            for way, overlap in (("waiting", False), ("overlapped", True)):
                trainer = DOWNPOUR(
                    mlp(inputs, hidden),
                    "adam",
                    "categorical_crossentropy",
                    num_workers=1,
                    batch_size=args.batch_size,
                    communication_window=args.window,
                    num_epoch=args.epochs,
                    master_port=0,
                    progress=False,
                    worker_threads=1,
                    check_learning=False,
                    overlap=overlap,
                )
                trainer.train(df)
                stamps = [h["timestamp"] for h in trainer.get_history()]
                runs[way].append(samples_per_second(stamps, args.batch_size))
        base = statistics.median(runs["fit"])
        for way, values in runs.items():
            median = statistics.median(values)
            spread = ", ".join(f"{v:.0f}" for v in values)
            print(
                f"| {params:,} | {way} | {median:.0f} | {median / base:.2f} | {spread} |",
                flush=True,
            )
        df.unpersist()
    spark.stop()


if __name__ == "__main__":
    main()

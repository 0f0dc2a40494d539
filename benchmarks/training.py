"""Training benchmark on scikit-learn's digits (no download) with an MLP, on Spark local[4].

Two measurements:

1. **Worker throughput** -- samples/s of one distkeras-async worker (DOWNPOUR, one worker,
   communication window 5, so exchanges with the parameter server are included) against plain
   ``model.fit`` run inside a Spark task on the same partition, model, batch size and TensorFlow
   thread count. Both are timed the same way: from the end of the first local step to the end
   of the last (TensorFlow start-up and tracing excluded), median over repeats.
2. **Time to accuracy** -- for every trainer with 1, 2 and 4 workers: wall-clock seconds from
   ``train()`` until the center first reaches the target test accuracy (the center is
   snapshotted every 0.25 s during training and each snapshot is evaluated afterwards).

    python benchmarks/training.py                 # both
    python benchmarks/training.py --only throughput --repeats 5
"""

from __future__ import annotations

import argparse
import json
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

from distkeras_async.spark import warm_up


def spark_session(cores: int) -> Any:
    from distkeras_async.demo import start_spark

    return start_spark(cores)


def mlp() -> Any:
    from distkeras_async.datasets import digits_mlp

    return digits_mlp(seed=None)


# --------------------------------------------------------------------------- throughput


def plain_fit_task(epochs: int, batch_size: int) -> Any:
    """A Spark task running plain model.fit on its partition, returning step timestamps."""

    def task(batches: Iterator[Any]) -> Iterator[Any]:
        import keras
        import pyarrow as pa

        from distkeras_async.worker.backend import limit_threads
        from distkeras_async.worker.columns import batches_to_numpy

        limit_threads(1)
        x, y = batches_to_numpy(batches, ["features", "label"])
        model = mlp()
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        stamps: list[float] = []

        class Stamp(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                stamps.append(time.time())

        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[Stamp()])
        yield pa.RecordBatch.from_pydict({"t": pa.array(stamps, pa.float64())})

    return task


def samples_per_second(stamps: list[float], batch_size: int) -> float:
    stamps = sorted(stamps)
    return (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])


def throughput(spark: Any, df: Any, repeats: int, epochs: int, batch_size: int) -> dict[str, Any]:
    from distkeras_async.spark import prepare
    from distkeras_async.trainers import DOWNPOUR

    one = prepare(df, ["features", "label"], 1)
    ours, base = [], []
    for _ in range(repeats):
        rows = one.mapInArrow(plain_fit_task(epochs, batch_size), "t double").collect()
        base.append(samples_per_second([r.t for r in rows], batch_size))
        trainer = DOWNPOUR(
            mlp(),
            "adam",
            "categorical_crossentropy",
            num_workers=1,
            batch_size=batch_size,
            communication_window=5,
            num_epoch=epochs,
            master_port=0,
            progress=False,
            worker_threads=1,
        )
        trainer.train(df)
        ours.append(samples_per_second([h["timestamp"] for h in trainer.get_history()], batch_size))
    result = {
        "benchmark": "worker_throughput",
        "batch_size": batch_size,
        "epochs": epochs,
        "repeats": repeats,
        "model_fit_samples_per_s": statistics.median(base),
        "worker_samples_per_s": statistics.median(ours),
        "ratio": statistics.median(ours) / statistics.median(base),
        "samples": {"model_fit": base, "worker": ours},
    }
    print(json.dumps(result), flush=True)
    return result


# --------------------------------------------------------------------------- time to accuracy


def trainer_for(name: str, workers: int, epochs: int) -> Any:
    """The demo's documented settings for each trainer (docs/trainers.md)."""
    from distkeras_async.demo import make_trainer

    return make_trainer(name, mlp(), workers, epochs, progress=False, snapshot_interval=0.25)


def one_run(
    df: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
    target: float,
    epochs: int,
    name: str,
    workers: int,
    evaluator: Any,
) -> tuple[float | None, float, float]:
    """(seconds to target or None, final accuracy, training time) of one training run."""
    trainer = trainer_for(name, workers, epochs)
    trainer.train(df)
    reached = None
    final = 0.0
    for seconds, weights in trainer.get_center_snapshots():
        evaluator.set_weights(weights)
        final = float((evaluator.predict(x_test, verbose=0).argmax(1) == y_test).mean())
        if reached is None and final >= target:
            reached = seconds
    return reached, final, trainer.get_training_time()


def median_or_none(values: list[float | None]) -> float | None:
    """The median, counting a run that never reached the target as infinitely slow."""
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    return ordered[len(ordered) // 2]


def time_to_accuracy(
    df: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
    target: float,
    epochs: int,
    names: list[str],
    worker_counts: list[int],
    repeats: int,
) -> list[dict[str, Any]]:
    results = []
    evaluator = mlp()
    for name in names:
        for workers in [1] if name == "SingleTrainer" else worker_counts:
            runs = [
                one_run(df, x_test, y_test, target, epochs, name, workers, evaluator)
                for _ in range(repeats)
            ]
            result = {
                "benchmark": "time_to_accuracy",
                "trainer": name,
                "workers": workers,
                "target": target,
                "epochs": epochs,
                "repeats": repeats,
                "seconds_to_target": median_or_none([r[0] for r in runs]),
                "final_accuracy": statistics.median(r[1] for r in runs),
                "training_time_s": statistics.median(r[2] for r in runs),
                "runs": runs,
            }
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["throughput", "accuracy"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--trainers",
        nargs="+",
        default=[
            "SingleTrainer",
            "DOWNPOUR",
            "ADAG",
            "DynSGD",
            "AsynchronousEASGD",
            "AsynchronousEAMSGD",
            "EASGD",
            "AveragingTrainer",
        ],
    )
    args = parser.parse_args()
    spark = spark_session(max(args.workers))
    from distkeras_async.datasets import digits

    data = digits(spark)
    df, x_test, y_test = data.train, data.x_test, data.y_test
    warm_up(df, max(args.workers))  # TensorFlow imported in every Python worker first
    try:
        if args.only in (None, "throughput"):
            throughput(spark, df, args.repeats, args.epochs, 32)
        if args.only in (None, "accuracy"):
            rows = time_to_accuracy(
                df,
                x_test,
                y_test,
                args.target,
                args.epochs,
                args.trainers,
                args.workers,
                args.repeats,
            )
            print()
            print(
                f"| trainer | workers | seconds to {args.target:.2f} | final accuracy | "
                "training time (s) |"
            )
            print("|---|---:|---:|---:|---:|")
            for r in rows:
                reached = (
                    "not reached"
                    if r["seconds_to_target"] is None
                    else (f"{r['seconds_to_target']:.1f}")
                )
                print(
                    f"| {r['trainer']} | {r['workers']} | {reached} | "
                    f"{r['final_accuracy']:.3f} | {r['training_time_s']:.1f} |"
                )
    finally:
        spark.stop()


if __name__ == "__main__":
    main()

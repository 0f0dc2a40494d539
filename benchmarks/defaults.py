"""Every classic trainer on its documented defaults: does it learn, and how fast?

The setup of issue #14 (and of the Elephas comparison that filed it): scikit-learn's digits,
the MLP 64-128-128-10, batch 32, 10 epochs; only ``num_workers``, ``num_epoch``,
``batch_size`` and ``master_port`` are set, every other argument keeps the trainer's default.
The worker optimizer is passed by name, as a user would (``"adam"``, ``"sgd"``,
``"rmsprop"``: Keras' defaults, learning rates 0.001, 0.01 and 0.001).

For each trainer, optimizer and worker count it prints one JSON line per run (held-out
accuracy, training time, seconds until the center first reached the target accuracy from
snapshots every 0.25 s) and a Markdown table of medians for docs/benchmarks.md.

    python benchmarks/defaults.py                                  # everything, 3 runs each
    python benchmarks/defaults.py --optimizers adam --workers 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRAINERS = [
    "SingleTrainer",
    "DOWNPOUR",
    "ADAG",
    "DynSGD",
    "AsynchronousEASGD",
    "AsynchronousEAMSGD",
    "EASGD",
    "AveragingTrainer",
]


def issue_mlp(seed: int) -> Any:
    """The MLP of the comparison: 64 inputs, two ReLU layers of 128, softmax over 10."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def run_once(
    name: str,
    optimizer: str,
    workers: int,
    epochs: int,
    data: Any,
    target: float,
    seed: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Train ``name`` on its defaults; the run's accuracy, time and time to ``target``."""
    import keras

    from distkeras_async import trainers

    model = issue_mlp(seed)
    cls = getattr(trainers, name)
    common = {"num_epoch": epochs, "batch_size": 32, "master_port": 0, "progress": False}
    if name != "SingleTrainer":
        common["num_workers"] = workers
    trainer = cls(
        model, optimizer, "categorical_crossentropy", snapshot_interval=0.25, **common, **extra
    )
    trained = trainer.train(data.train)
    accuracy = data.accuracy(trained)
    evaluator = keras.models.clone_model(model)
    reached = None
    for seconds, weights in trainer.get_center_snapshots():
        evaluator.set_weights(weights)
        if data.accuracy(evaluator) >= target:
            reached = seconds
            break
    return {
        "trainer": name,
        "optimizer": optimizer,
        "workers": 1 if name == "SingleTrainer" else workers,
        "seed": seed,
        "accuracy": round(accuracy, 4),
        "training_time_s": round(trainer.get_training_time(), 2),
        "seconds_to_target": None if reached is None else round(reached, 2),
        "set": extra,
        "warnings": [str(w) for w in getattr(trainer, "warnings", [])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd", "rmsprop"])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument(
        "--set",
        type=json.loads,
        default={},
        help="arguments that replace defaults, as JSON, e.g. '{\"communication_window\": 2}'",
    )
    args = parser.parse_args()

    from distkeras_async.datasets import digits
    from distkeras_async.demo import start_spark
    from distkeras_async.spark import warm_up

    cores = max(args.workers)
    spark = start_spark(cores)
    data = digits(spark)
    warm_up(data.train, cores)
    rows: list[dict[str, Any]] = []
    try:
        for name in args.trainers:
            for optimizer in args.optimizers:
                for workers in [1] if name == "SingleTrainer" else args.workers:
                    runs = [
                        run_once(
                            name, optimizer, workers, args.epochs, data, args.target, seed, args.set
                        )
                        for seed in range(args.repeats)
                    ]
                    for run in runs:
                        print(json.dumps(run), flush=True)
                    reached = [r["seconds_to_target"] for r in runs]
                    rows.append(
                        {
                            "trainer": name,
                            "optimizer": optimizer,
                            "workers": runs[0]["workers"],
                            "accuracy": statistics.median(r["accuracy"] for r in runs),
                            "low": min(r["accuracy"] for r in runs),
                            "high": max(r["accuracy"] for r in runs),
                            "to_target": sorted(
                                reached, key=lambda v: float("inf") if v is None else v
                            )[len(reached) // 2],
                            "time": statistics.median(r["training_time_s"] for r in runs),
                        }
                    )
    finally:
        spark.stop()
    print()
    print(
        f"| trainer | optimizer | workers | accuracy (median, min-max) | s to {args.target} "
        "| training time (s) |"
    )
    print("|---|---|---:|---|---:|---:|")
    for r in rows:
        to_target = "not reached" if r["to_target"] is None else f"{r['to_target']:.1f}"
        print(
            f"| {r['trainer']} | {r['optimizer']} | {r['workers']} | {r['accuracy']:.3f} "
            f"({r['low']:.3f}-{r['high']:.3f}) | {to_target} | {r['time']:.1f} |"
        )


if __name__ == "__main__":
    main()

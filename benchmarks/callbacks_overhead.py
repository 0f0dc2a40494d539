"""What validation and callbacks cost: digits, 2 workers, with and without them.

The same DOWNPOUR run (the demo's settings, ``--epochs`` epochs on ``local[2]``) is timed
four ways: without anything (the baseline); with one callback that does nothing (what the
machinery costs: epoch-end exchanges, the epoch centers, the driver model); with validation
data only (the 360 held-out digits, evaluated on the driver every epoch); and with
validation plus the callbacks a user typically adds: ``EarlyStopping`` (a patience it never
reaches), ``ModelCheckpoint`` (``.keras``, ``save_best_only`` on ``val_loss``), ``CSVLogger``
and a ``LearningRateScheduler``. Runs alternate between the four (baseline first) so that
drift hits all alike; the figures are the medians of ``--repeats`` runs of each, and their
ratios to the baseline. Time is the trainer's own
``get_training_time()``: from ``train()``'s first check to the returned model, which
includes the validation DataFrame or arrays, the driver model, every epoch's evaluation and
callbacks, and the epoch-end exchanges.

    python benchmarks/callbacks_overhead.py --epochs 10 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from typing import Any


def callbacks(folder: str) -> list[Any]:
    import keras

    return [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1000),
        keras.callbacks.ModelCheckpoint(os.path.join(folder, "best.keras"), save_best_only=True),
        keras.callbacks.CSVLogger(os.path.join(folder, "epochs.csv")),
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    import keras
    import numpy as np

    from distkeras_async.datasets import digits, digits_mlp
    from distkeras_async.demo import make_trainer, start_spark
    from distkeras_async.spark.jobs import warm_up

    spark = start_spark(2)
    try:
        data = digits(spark)
        warm_up(data.train, 2)
        validation = (data.x_test, np.eye(10, dtype=np.float32)[data.y_test])
        times: dict[str, list[float]] = {
            "baseline": [],
            "a no-op callback": [],
            "validation": [],
            "validation+callbacks": [],
        }
        accuracy: dict[str, list[float]] = {k: [] for k in times}
        # One unmeasured run of each: Spark's Python workers import TensorFlow once.
        for measured in [False] + [True] * args.repeats:
            for kind, seconds in times.items():
                trainer = make_trainer("DOWNPOUR", digits_mlp(), 2, args.epochs, progress=False)
                with tempfile.TemporaryDirectory() as folder:
                    extra: dict[str, Any] = {
                        "baseline": {},
                        "a no-op callback": {"callbacks": [keras.callbacks.Callback()]},
                        "validation": {"validation_data": validation},
                        "validation+callbacks": {
                            "validation_data": validation,
                            "callbacks": callbacks(folder),
                        },
                    }[kind]
                    model = trainer.train(data.train, **extra)
                if measured:
                    seconds.append(trainer.get_training_time())
                    accuracy[kind].append(data.accuracy(model))
        medians = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "epochs": args.epochs,
            "repeats": args.repeats,
            "seconds": times,
            "median_seconds": medians,
            "ratio": {k: v / medians["baseline"] for k, v in medians.items()},
            "median_accuracy": {k: statistics.median(v) for k, v in accuracy.items()},
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for kind, seconds in times.items():
                print(
                    f"{kind:<22} median {medians[kind]:.2f} s  "
                    f"ratio {result['ratio'][kind]:.3f}  "
                    f"({', '.join(f'{s:.2f}' for s in seconds)})  "
                    f"accuracy {result['median_accuracy'][kind]:.3f}"
                )
    finally:
        spark.stop()


if __name__ == "__main__":
    main()

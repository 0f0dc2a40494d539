"""Fixed cost of a training job: the trainers against plain ``model.fit`` on the driver.

In one warm Spark ``local[2]`` session (Keras imported in the Python workers first), on
scikit-learn's digits with the demo's MLP, 10 epochs, batch 32, Adam: wall-clock seconds of

- plain ``model.fit`` on the driver, on the same rows collected as numpy arrays;
- ``SingleTrainer.train`` (one worker, the parameter server, the learning check);
- ``DOWNPOUR.train`` with 2 workers;

alternating, medians of ``--repeats``, and each trainer's ratio to ``fit``. The trainers run
twice: with the demo's model every time, so each Spark Python worker takes back the model
its last task kept (``distkeras_async.worker.reuse``), and with a new architecture every run
(another hidden width), so every task builds and traces its model anew, as the first job of
a session does.

    python benchmarks/fixed_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

EPOCHS, BATCH = 10, 32


def main() -> None:
    """Time each way, alternating; print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np

    from distkeras_async.datasets import digits, digits_mlp
    from distkeras_async.demo import start_spark
    from distkeras_async.spark import warm_up
    from distkeras_async.trainers import DOWNPOUR, SingleTrainer

    spark = start_spark(2)  # the demo's session: loopback, TensorFlow's notices off
    data = digits(spark)
    warm_up(data.train, 2)
    rows = data.train.select("features", "label").collect()
    x = np.array([r.features.toArray() for r in rows], np.float32)
    y = np.array([r.label.toArray() for r in rows], np.float32)
    common = {"num_epoch": EPOCHS, "batch_size": BATCH, "master_port": 0, "progress": False}

    def plain_fit() -> None:
        model = digits_mlp()
        model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=True, verbose=0)

    def single() -> None:
        SingleTrainer(digits_mlp(), "adam", "categorical_crossentropy", **common).train(data.train)

    def downpour() -> None:
        DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_workers=2, **common).train(
            data.train
        )

    widths = itertools.count(65)  # a new architecture for every run: nothing to take back

    def single_new() -> None:
        model = digits_mlp(hidden=next(widths))
        SingleTrainer(model, "adam", "categorical_crossentropy", **common).train(data.train)

    def downpour_new() -> None:
        model = digits_mlp(hidden=next(widths))
        DOWNPOUR(model, "adam", "categorical_crossentropy", num_workers=2, **common).train(
            data.train
        )

    fit_name = "plain `model.fit` (driver)"
    phases: list[dict[str, Callable[[], None]]] = [
        {
            fit_name: plain_fit,
            "SingleTrainer, model kept by the worker": single,
            "DOWNPOUR, 2 workers, models kept": downpour,
        },
        {
            fit_name: plain_fit,
            "SingleTrainer, new architecture": single_new,
            "DOWNPOUR, 2 workers, new architecture": downpour_new,
        },
    ]
    print(f"| way | seconds (median of {args.repeats}) | vs `fit` | runs |")
    print("|---|---:|---:|---|")
    for ways in phases:  # one phase after the other: a worker keeps one model
        for way in ways.values():  # warm-up: every path traced once
            way()
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                began = time.perf_counter()
                way()
                seconds[name].append(time.perf_counter() - began)
        base = statistics.median(seconds[fit_name])
        for name, values in seconds.items():
            median = statistics.median(values)
            spread = ", ".join(f"{v:.2f}" for v in values)
            print(f"| {name} | {median:.2f} | {median / base:.2f} | {spread} |")
    spark.stop()


if __name__ == "__main__":
    main()

"""A training job for a real Spark standalone cluster, submitted by ``tests/test_cluster.py``.

Run with ``spark-submit --master spark://... cluster_job.py RESULT.json``. It uses the public
API exactly as a user's script would (the master and every Spark setting come from
spark-submit, none from here), trains the digits MLP once with an asynchronous trainer
(DOWNPOUR: ordinary tasks) and once with a synchronous one (AveragingTrainer: a barrier
stage), and writes what the test checks to ``RESULT.json``:

- ``trainers``: per trainer, the test accuracy, the distinct workers in its history and the
  training time;
- ``probe``: where a 2-task barrier stage ran (the Python worker's working directory, which a
  standalone Worker sets to ``<work-dir>/<app-id>/<executor-id>``, and its interpreter) -
  with 2 slots of 1 core on 2 executors, a barrier stage has to place one task on each;
- ``app_id``, ``master`` and ``default_parallelism`` of the session.

Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pyspark.sql import SparkSession

from distkeras_async.datasets import digits, digits_mlp
from distkeras_async.trainers import DOWNPOUR, AveragingTrainer


def where_am_i(_: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Runs on an executor: the Python worker's working directory, interpreter and pid."""
    yield {"cwd": os.path.realpath(os.getcwd()), "python": sys.executable, "pid": os.getpid()}


def main(result_path: str) -> None:
    """Train with both scheduling modes and write the result JSON to ``result_path``."""
    spark = SparkSession.builder.appName("distkeras-async-cluster-test").getOrCreate()
    sc = spark.sparkContext
    result: dict[str, Any] = {
        "app_id": sc.applicationId,
        "master": sc.master,
        "default_parallelism": sc.defaultParallelism,
        "trainers": {},
    }
    try:
        # Where do Python tasks run? A barrier stage must run both tasks at once, so on two
        # 1-core executors each runs one: both executors' working directories show up.
        probe = sc.parallelize(range(2), 2).barrier().mapPartitions(where_am_i).collect()
        result["probe"] = probe

        data = digits(spark)
        # The demo's settings and epochs (distkeras_async.demo.SETTINGS), which reach 90 % on
        # local[2] in tests/test_trainers.py; training itself takes seconds, most of the
        # job's time goes to starting executors and importing TensorFlow there.
        runs = {
            "DOWNPOUR": DOWNPOUR(
                digits_mlp(),
                "adam",
                "categorical_crossentropy",
                num_workers=2,
                batch_size=32,
                communication_window=5,
                num_epoch=10,
                master_port=0,
                progress=False,
            ),
            "AveragingTrainer": AveragingTrainer(
                digits_mlp(),
                "adam",
                "categorical_crossentropy",
                num_workers=2,
                batch_size=32,
                communication_window=10,
                num_epoch=15,
                master_port=0,
                progress=False,
            ),
        }
        for name, trainer in runs.items():
            began = time.monotonic()
            model = trainer.train(data.train)
            result["trainers"][name] = {
                "accuracy": data.accuracy(model),
                "workers": sorted({int(row["worker"]) for row in trainer.get_history()}),
                "seconds": round(time.monotonic() - began, 1),
            }
            print(f"cluster_job: {name} {result['trainers'][name]}", flush=True)
    finally:
        # Write whatever was measured, so a failing run still explains how far it got.
        with open(result_path, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])

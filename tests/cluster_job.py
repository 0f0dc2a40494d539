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
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

import distkeras_async
from distkeras_async.datasets import digits, digits_mlp
from distkeras_async.trainers import DOWNPOUR, AveragingTrainer
from distkeras_async.worker import KerasWorker


def where_am_i(_: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Runs on an executor: the Python worker's working directory, interpreter, the
    distkeras-async it imports (and its version), and its pid."""
    import distkeras_async

    yield {
        "cwd": os.path.realpath(os.getcwd()),
        "python": sys.executable,
        "prefix": os.path.realpath(sys.prefix),
        "package": os.path.realpath(distkeras_async.__file__),
        "version": distkeras_async.__version__,
        "pid": os.getpid(),
    }


class DeviceProbeWorker(KerasWorker):
    """The default worker, which also writes down what its task was given and what it sees.

    ``build_model`` runs in the task after the worker bound its process and before the model
    exists: what it records is the environment the backend (TensorFlow, imported by then)
    reads its devices from, next to the GPU addresses Spark assigned to the task.
    """

    probe_dir = ""

    def build_model(self) -> Any:
        import tensorflow as tf
        from pyspark import TaskContext

        context = TaskContext.get()
        assert context is not None
        assigned = context.resources().get("gpu")
        record = {
            "worker": self.worker_id,
            "assigned": [] if assigned is None else sorted(assigned.addresses),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "tf_gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "keras_loaded": "keras" in sys.modules,
            # The worker limited its CPU threads (to its task's cores) before this call.
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "pid": os.getpid(),
        }
        # A class attribute set by main() before each run: cloudpickle ships a class of
        # __main__ by value, with its attributes as they are then.
        path = os.path.join(type(self).probe_dir, f"{self.worker_id}-{self.attempt}.json")
        with open(path, "w", encoding="utf-8") as out:
            json.dump(record, out)
        return super().build_model()


def main(result_path: str, probe_root: str) -> None:
    """Train with both scheduling modes and write the result JSON to ``result_path``."""
    spark = SparkSession.builder.appName("distkeras-async-cluster-test").getOrCreate()
    sc = spark.sparkContext
    result: dict[str, Any] = {
        "app_id": sc.applicationId,
        "master": sc.master,
        "default_parallelism": sc.defaultParallelism,
        "driver_package": os.path.realpath(distkeras_async.__file__),
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
                worker_class=DeviceProbeWorker,  # use_gpu not set: the task's GPUs
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
                worker_class=DeviceProbeWorker,
                use_gpu=False,  # the tasks are given GPUs, the workers must hide them
            ),
        }
        for name, trainer in runs.items():
            probe_dir = os.path.join(probe_root, name)
            os.makedirs(probe_dir)
            DeviceProbeWorker.probe_dir = probe_dir
            began = time.monotonic()
            model = trainer.train(data.train)
            history = trainer.get_history()
            result["trainers"][name] = {
                "accuracy": data.accuracy(model),
                "workers": sorted({int(row["worker"]) for row in history}),
                "seconds": round(time.monotonic() - began, 1),
                # Per worker: where its history says it trained, and its Spark GPUs.
                "devices": sorted({(row["worker"], row["device"], row["gpus"]) for row in history}),
                "probes": [
                    json.loads(Path(probe_dir, f).read_text(encoding="utf-8"))
                    for f in sorted(os.listdir(probe_dir))
                ],
            }
            print(f"cluster_job: {name} {result['trainers'][name]}", flush=True)
    finally:
        # Write whatever was measured, so a failing run still explains how far it got.
        with open(result_path, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""A KerasEstimator fit with the driver on ``$KERAS_BACKEND``, for ``tests/test_backends.py``.

Run as ``KERAS_BACKEND=jax python backend_job.py OUT_DIR``: trains digits (workers on the same
backend), saves the fitted stage to ``OUT_DIR/stage`` and writes ``OUT_DIR/report.json`` with
the backend, the test accuracy and the stage's predictions of the first training rows (by
``label_index``), which the test compares after loading the stage on TensorFlow.

Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(out: Path) -> None:
    import keras
    from pyspark.sql import SparkSession

    from distkeras_async.datasets import digits, digits_mlp
    from distkeras_async.ml import KerasEstimator

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        data = digits(spark)
        estimator = KerasEstimator(
            model=digits_mlp(),
            loss="categorical_crossentropy",
            hyperparameters={"communication_window": 4},
            numEpochs=4,
            backend=keras.backend.backend(),
        )
        fitted = estimator.fit(data.train)
        fitted.write().overwrite().save(str(out / "stage"))
        rows = data.train.orderBy("label_index").limit(32)
        predictions = [r.prediction for r in fitted.transform(rows).collect()]
        report = {
            "backend": keras.backend.backend(),
            "accuracy": data.accuracy(fitted.getModel()),
            "predictions": predictions,
        }
        (out / "report.json").write_text(json.dumps(report))
    finally:
        spark.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Prediction cost per task: ``ModelPredictor`` on few and on many partitions.

A 2.2M-parameter MLP (64 -> 1024 -> 1024 -> 1024 -> 10) predicts 500,000 rows of random
features on ``local[2]``, split into 2 and into 64 partitions. With the same rows and the
same model, the difference between the two is what each extra task costs: before the model
cache, every task rebuilt the model and traced its predict function again. Medians of
``--repeats`` runs, each ending in a full ``count()`` of the prediction column.

    python benchmarks/prediction_partitions.py --rows 500000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any


def big_mlp() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def predictor_class() -> Any:
    try:
        from distkeras_async.spark import ModelPredictor
    except ImportError:  # the flat layout of earlier versions
        from distkeras_async.predictors import ModelPredictor  # type: ignore[no-redef]
    return ModelPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from pyspark.sql import functions as F  # noqa: N812

    from distkeras_async.demo import start_spark

    spark = start_spark(2)
    try:
        model = big_mlp()
        params = model.count_params()
        base = spark.range(args.rows).select(
            F.array(*[F.rand(seed=i).cast("float") for i in range(64)]).alias("features")
        )
        predictor = predictor_class()(model, batch_size=1024)
        for partitions in args.partitions:
            df = base.repartition(partitions).cache()
            df.count()
            predictor.predict(df.limit(1000)).select("prediction").count()  # warm the workers
            samples = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                predictor.predict(df).select("prediction").count()
                samples.append(time.perf_counter() - began)
            seconds = statistics.median(samples)
            print(
                json.dumps(
                    {
                        "benchmark": "prediction_partitions",
                        "parameters": params,
                        "rows": args.rows,
                        "partitions": partitions,
                        "seconds": seconds,
                        "rows_per_s": args.rows / seconds,
                        "samples": samples,
                    }
                ),
                flush=True,
            )
            df.unpersist()
    finally:
        spark.stop()


if __name__ == "__main__":
    main()

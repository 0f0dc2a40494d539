"""Prediction benchmark: ModelPredictor (Arrow batches) against one row at a time.

Both predict with the same digits MLP on the same DataFrame (the digits rows repeated
``--copies`` times) on ``local[2]``, and both build the model once per partition; the baseline
then calls ``predict_on_batch`` on one row at a time, as Distributed Keras 2017 did. Medians of
``--repeats`` runs, each ending in a full ``count()`` of the written column.

    python benchmarks/prediction.py --copies 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


def row_at_a_time(df: Any, model: Any) -> Any:
    import keras

    config = json.dumps(keras.saving.serialize_keras_object(model))
    weights = [w.tolist() for w in model.get_weights()]

    def predict_partition(rows: Iterator[Any]) -> Iterator[Any]:
        import keras
        import numpy as np

        local = keras.saving.deserialize_keras_object(json.loads(config))
        local.set_weights([np.asarray(w, np.float32) for w in weights])
        for row in rows:
            x = np.asarray([row.features.toArray()], np.float32)
            yield (*row, [float(v) for v in local.predict_on_batch(x)[0]])

    from pyspark.sql import types as T  # noqa: N812

    schema = T.StructType(
        [*df.schema.fields, T.StructField("prediction", T.ArrayType(T.DoubleType()))]
    )
    return df.rdd.mapPartitions(predict_partition).toDF(schema)


def timed(make: Any) -> float:
    began = time.perf_counter()
    make().select("prediction").count()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from distkeras_async.datasets import digits, digits_mlp
    from distkeras_async.demo import start_spark
    from distkeras_async.spark import ModelPredictor, warm_up

    spark = start_spark(2)
    try:
        train = digits(spark).train
        df = train
        for _ in range(args.copies - 1):
            df = df.union(train)
        df = df.repartition(2).cache()
        rows = df.count()
        warm_up(df, 2)
        model = digits_mlp()
        predictor = ModelPredictor(model, batch_size=1024)
        batched, single = [], []
        for _ in range(args.repeats):
            batched.append(timed(lambda: predictor.predict(df)))
            single.append(timed(lambda: row_at_a_time(df, model)))
        result = {
            "benchmark": "prediction",
            "rows": rows,
            "repeats": args.repeats,
            "model_predictor_s": statistics.median(batched),
            "row_at_a_time_s": statistics.median(single),
            "speedup": statistics.median(single) / statistics.median(batched),
            "model_predictor_rows_per_s": rows / statistics.median(batched),
            "row_at_a_time_rows_per_s": rows / statistics.median(single),
            "samples": {"model_predictor_s": batched, "row_at_a_time_s": single},
        }
        print(json.dumps(result))
    finally:
        spark.stop()


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

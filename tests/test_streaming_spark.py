"""Streamed partitions end to end on Spark: spooled to Spark's local directory, sparse
vectors, images as bytes, bad rows deep in a partition, and prediction."""

from __future__ import annotations

import glob
import os
import sys

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import types as T  # noqa: N812

from distkeras_async.datasets import digits_mlp, load_digits_split
from distkeras_async.errors import WorkerFailedError
from distkeras_async.spark import ModelPredictor
from distkeras_async.trainers import DOWNPOUR
from distkeras_async.worker import KerasWorker

pytestmark = pytest.mark.slow

COMMON = {"num_workers": 2, "batch_size": 32, "master_port": 0, "progress": False}
X_TRAIN, _, DIGIT_TRAIN, _ = load_digits_split()
Y_TRAIN = np.eye(10)[DIGIT_TRAIN]


class SpooledInSparkDirectory(KerasWorker):
    """Fails the task unless its partition streams from a file in SPARK_LOCAL_DIRS."""

    def run_stream(self, partition):
        local = os.environ.get("SPARK_LOCAL_DIRS", "").split(",")
        assert partition.path and os.path.exists(partition.path), partition.path
        assert any(d and partition.path.startswith(d) for d in local), (partition.path, local)
        return super().run_stream(partition)


class RawImageWorker(KerasWorker):
    """Decodes 8x8 images stored as 64 bytes (0..16) per row, block by block."""

    def decode_column(self, name, column, first_row):
        if pa.types.is_binary(column.type):
            pixels = np.stack([np.frombuffer(v, np.uint8) for v in column.to_pylist()])
            return (pixels / 16).astype(np.float32)
        return super().decode_column(name, column, first_row)


@pytest.fixture
def ship_this_module():
    """Spark workers cannot import the tests: send this module's classes by value."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def spool_files() -> set[str]:
    return set(glob.glob("/tmp/**/distkeras-partition-*", recursive=True))


def test_a_streamed_run_trains_every_row_each_epoch(digits, ship_this_module):
    # Compared with what was there before: another process's leftover is not this run's.
    before = spool_files()
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        **COMMON,
        num_epoch=5,
        in_memory_limit=0,
        shuffle_window=256,
        worker_class=SpooledInSparkDirectory,
    )
    trained = trainer.train(digits.train, shuffle=True)
    rows = digits.train.count()
    steps = len(trainer.get_history())
    # Two partitions of r0 + r1 = rows: 5 * (ceil(r0/32) + ceil(r1/32)) steps.
    assert 5 * -(-rows // 32) <= steps <= 5 * (-(-rows // 32) + 1)
    assert digits.accuracy(trained) > 0.9
    assert not spool_files() - before  # every worker removed its spool file


def test_sparse_vectors_train_without_densifying_the_partition(spark, digits):
    x, y = X_TRAIN, Y_TRAIN
    rows = [
        (Vectors.sparse(64, {i: float(v) for i, v in enumerate(r) if v}), Vectors.dense(t))
        for r, t in zip(x, y, strict=True)
    ]
    schema = T.StructType(
        [T.StructField("features", VectorUDT()), T.StructField("label", VectorUDT())]
    )
    df = spark.createDataFrame(rows, schema)
    trainer = DOWNPOUR(
        digits_mlp(), "adam", "categorical_crossentropy", **COMMON, num_epoch=5, in_memory_limit=0
    )
    trained = trainer.train(df, shuffle=True)
    assert digits.accuracy(trained) > 0.85
    predicted = ModelPredictor(trained).predict(df.limit(50)).collect()
    expected = trained.predict(x[:50], verbose=0)
    got = np.array([r.prediction.toArray() for r in predicted])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_images_stored_as_bytes_are_decoded_by_the_worker(spark, digits, ship_this_module):
    images = np.rint(X_TRAIN * 16).astype(np.uint8)
    rows = [(bytes(i), Vectors.dense(t)) for i, t in zip(images, Y_TRAIN, strict=True)]
    schema = T.StructType(
        [T.StructField("image", T.BinaryType()), T.StructField("label", VectorUDT())]
    )
    df = spark.createDataFrame(rows, schema)
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        **COMMON,
        num_epoch=5,
        features_col="image",
        in_memory_limit=0,
        worker_class=RawImageWorker,
    )
    assert digits.accuracy(trainer.train(df, shuffle=True)) > 0.85


def test_bytes_without_a_decoder_fail_on_the_driver(spark):
    rows = [(b"\x00" * 64, Vectors.dense(t)) for t in Y_TRAIN[:10]]
    schema = T.StructType(
        [T.StructField("image", T.BinaryType()), T.StructField("label", VectorUDT())]
    )
    trainer = DOWNPOUR(
        digits_mlp(), "adam", "categorical_crossentropy", **COMMON, features_col="image"
    )
    with pytest.raises(ValueError, match=r"'image' holds bytes.*decode_column"):
        trainer.train(spark.createDataFrame(rows, schema))


def test_a_null_deep_in_a_streamed_partition_is_named(spark):
    rows = [
        (Vectors.dense(f.astype(float)), Vectors.dense(t))
        for f, t in zip(X_TRAIN, Y_TRAIN, strict=True)
    ]
    rows[1000] = (None, rows[1000][1])
    schema = T.StructType(
        [T.StructField("features", VectorUDT()), T.StructField("label", VectorUDT())]
    )
    df = spark.createDataFrame(rows, schema).coalesce(1)
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        **{**COMMON, "num_workers": 1},
        in_memory_limit=0,
    )
    with pytest.raises(WorkerFailedError) as caught:
        trainer.train(df)
    assert "column 'features' has 1 null value(s), the first at row 1000" in str(caught.value)

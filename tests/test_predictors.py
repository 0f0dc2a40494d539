"""ModelPredictor: batch-wise prediction on the executors, columns and row order kept."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from distkeras_async.datasets import digits_mlp
from distkeras_async.spark import ModelPredictor

pytestmark = pytest.mark.slow


def test_predictions_match_keras_keep_columns_and_order(spark, digits):
    model = digits_mlp()
    df = digits.train.repartition(3)  # several partitions, rows in a known order per partition
    expected_rows = df.collect()
    predicted = ModelPredictor(model, batch_size=100).predict(df)
    assert predicted.columns == [*df.columns, "prediction"]
    rows = predicted.collect()
    assert [r.label_index for r in rows] == [r.label_index for r in expected_rows]
    x = np.array([r.features.toArray() for r in rows], np.float32)
    got = np.array([r.prediction.toArray() for r in rows])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_single_output_regression_writes_a_double(spark):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    df = spark.createDataFrame(
        [([1.0, 2.0, 3.0], "a"), ([0.0, -1.0, 0.5], "b")], "x array<double>, id string"
    )
    rows = ModelPredictor(model, features_col="x", output_col="y").predict(df).collect()
    assert [r.id for r in rows] == ["a", "b"]
    expected = model.predict(np.array([[1, 2, 3], [0, -1, 0.5]], np.float32), verbose=0)[:, 0]
    np.testing.assert_allclose([r.y for r in rows], expected, rtol=1e-5)
    assert isinstance(rows[0].y, float)


def test_bad_arguments_are_named(spark, digits):
    with pytest.raises(ValueError, match="batch_size"):
        ModelPredictor(digits_mlp(), batch_size=0)
    with pytest.raises(KeyError, match="nope"):
        ModelPredictor(digits_mlp(), features_col="nope").predict(digits.train)
    with pytest.raises(ValueError, match="already has a column 'label'"):
        ModelPredictor(digits_mlp(), output_col="label").predict(digits.train)

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


def test_a_python_worker_rebuilds_a_model_once_and_traces_one_shape(monkeypatch):
    """The task function, run twice in this process as a reused Python worker would: the
    second task reuses the model the first built, and every batch has the same shape."""
    import pyarrow as pa

    from distkeras_async.spark import model_cache, predictor

    monkeypatch.setattr(model_cache, "_models", model_cache.OrderedDict())
    model = digits_mlp()
    p = ModelPredictor(model, batch_size=32)
    task = predictor._predict_task(p._config, p._key, p._weights, p._layout.to_wire(), 32, {})
    x = np.random.default_rng(0).random((70, 64)).astype(np.float32)  # 32 + 32 + 6 rows
    batch = pa.RecordBatch.from_pydict(
        {predictor._FEATURES: pa.array(list(x), type=pa.list_(pa.float32()))}
    )
    builds: list[int] = []
    original = model_cache.build_from

    def counting(*args):
        builds.append(1)
        return original(*args)

    monkeypatch.setattr(model_cache, "build_from", counting)
    shapes: list[tuple[int, ...]] = []
    first = list(task(iter([batch])))
    cached = model_cache._models[model_cache.model_key(p._config, p._weights)]
    real = cached.predict_on_batch
    monkeypatch.setattr(cached, "predict_on_batch", lambda b: shapes.append(b.shape) or real(b))
    second = list(task(iter([batch])))
    assert len(builds) == 1 and model_cache.cache_size() == 1
    assert shapes == [(32, 64)] * 3  # the 6-row tail was padded to the fixed shape
    for out in (first, second):
        got = np.array(out[0].column(predictor._OUTPUT).to_pylist(), np.float32)
        np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_the_cache_is_bounded():
    from distkeras_async.spark import model_cache

    saved = model_cache._models.copy()
    try:
        model_cache._models.clear()
        for i in range(model_cache.MAX_MODELS + 3):
            model_cache.cached_model(f"k{i}", lambda i=i: i)
        assert model_cache.cache_size() == model_cache.MAX_MODELS
        assert list(model_cache._models) == [f"k{i}" for i in range(3, model_cache.MAX_MODELS + 3)]
        assert model_cache.cached_model("k3", lambda: "rebuilt") == 3  # kept, not rebuilt
    finally:
        model_cache._models.clear()
        model_cache._models.update(saved)

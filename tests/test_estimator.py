"""KerasEstimator / KerasModel: Spark ML Params, fit with any algorithm, save and load."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pyspark.ml import Pipeline
from pyspark.sql import functions as F  # noqa: N812

from distkeras_async.datasets import digits_mlp
from distkeras_async.errors import DeviceError
from distkeras_async.ml import KerasEstimator, KerasModel

pytestmark = pytest.mark.slow


def small_mlp(hidden: int = 16) -> keras.Model:
    return digits_mlp(hidden=hidden, seed=0)


def base_estimator(**params: object) -> KerasEstimator:
    settings: dict[str, object] = {
        "model": small_mlp(),
        "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.01}},
        "loss": "categorical_crossentropy",
        "numEpochs": 1,
        "batchSize": 32,
        "numWorkers": 2,
        "hyperparameters": {"communication_window": 4},
    }
    settings.update(params)
    return KerasEstimator(**settings)


@pytest.fixture(scope="module")
def data(digits):
    """600 digits rows: features, one-hot label, label_index."""
    return digits.train.limit(600).cache()


@pytest.fixture(scope="module")
def baseline(data):
    return base_estimator().fit(data)


def steps_per_worker(model: KerasModel) -> dict[int, int]:
    counts: dict[int, int] = {}
    for row in model.history:
        counts[row["worker"]] = counts.get(row["worker"], 0) + 1
    return counts


# --- Params without training ------------------------------------------------------------


def test_defaults_and_explain_params():
    est = KerasEstimator()
    assert est.getOrDefault("optimizer") == "adam"
    assert est.getOrDefault("algorithm") == "downpour"
    assert est.getOrDefault("metrics") == ["accuracy"]
    assert est.getOrDefault("numWorkers") == 2
    assert est.getOrDefault("numEpochs") == 1
    assert est.getOrDefault("batchSize") == 32
    assert est.getFeaturesCol() == "features"
    assert est.getLabelCol() == "label"
    assert est.getPredictionCol() == "prediction"
    text = est.explainParams()
    for name in ("model", "optimizer", "loss", "algorithm", "hyperparameters", "numWorkers"):
        assert f"{name}:" in text


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("model", "not a model", "expected a built keras.Model"),
        ("optimizer", "no-such-optimizer", "not a Keras optimizer"),
        ("loss", object(), "cannot be serialized"),
        ("loss", "no_such_loss", "Could not interpret loss"),
        ("metrics", ["accuracy", "no_such_metric"], "Could not interpret metric"),
        ("algorithm", "no-such-algorithm", "unknown algorithm"),
        ("hyperparameters", {"communication_window": [1]}, "must be a number"),
        ("hyperparameters", "window=1", "expected a dict"),
        ("numWorkers", 0, "positive int"),
        ("numEpochs", -1, "positive int"),
        ("batchSize", 1.5, "positive int"),
        ("numWorkers", None, "cannot be None"),
        ("shards", 0, "positive int"),
        ("overlap", "yes", "overlap"),
    ],
)
def test_bad_param_values_are_refused_naming_the_param(param, value, message):
    est = KerasEstimator()
    before = est.extractParamMap()
    for attempt in (
        lambda: est.set(est.getParam(param), value),
        lambda: est.setParams(**{param: value}),
        lambda: KerasEstimator(**{param: value}),
    ):
        with pytest.raises(TypeError, match=message) as info:
            attempt()
        assert param in str(info.value)
    assert est.extractParamMap() == before


def test_set_params_is_all_or_nothing():
    est = KerasEstimator(numEpochs=3)
    with pytest.raises(TypeError, match="batchSize"):
        est.setParams(numEpochs=5, batchSize=0)
    assert est.getNumEpochs() == 3


def test_none_means_unset_or_empty_and_survives_save_load(spark, tmp_path):
    est = KerasEstimator(model=None, loss=None, metrics=None, hyperparameters=None)
    assert not est.isSet("model") and not est.isSet("loss")
    assert est.getMetrics() == [] and est.getHyperparameters() == {}
    est.save(str(tmp_path / "e"))
    loaded = KerasEstimator.load(str(tmp_path / "e"))
    assert loaded.getMetrics() == [] and loaded.getHyperparameters() == {}
    assert not loaded.isSet("model")


def test_setters_and_getters():
    est = (
        KerasEstimator()
        .setModel(small_mlp())
        .setOptimizer("sgd")
        .setLoss("mse")
        .setMetrics(["mae"])
        .setAlgorithm("dynsgd")
        .setHyperparameters({"communication_window": 3})
        .setNumWorkers(3)
        .setNumEpochs(4)
        .setBatchSize(16)
        .setFeaturesCol("x")
        .setLabelCol("y")
        .setPredictionCol("z")
    )
    got = (
        est.getOptimizer(),
        est.getLoss(),
        est.getMetrics(),
        est.getAlgorithm(),
        est.getHyperparameters(),
        est.getNumWorkers(),
        est.getNumEpochs(),
        est.getBatchSize(),
        est.getFeaturesCol(),
        est.getLabelCol(),
        est.getPredictionCol(),
    )
    assert got == (
        "sgd",
        "mse",
        ["mae"],
        "dynsgd",
        {"communication_window": 3},
        3,
        4,
        16,
        "x",
        "y",
        "z",
    )
    assert est.getModel().layers[0].units == 16


def test_an_unbuilt_model_is_refused():
    with pytest.raises(TypeError, match="model"):
        KerasEstimator(model=keras.Sequential([keras.layers.Dense(2)]))


def test_a_model_with_custom_classes_is_refused_when_set():
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return x * 2

    model = keras.Sequential([keras.Input((3,)), Doubling(), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match=r"model: .*not part of Keras \(Doubling\)"):
        KerasEstimator(model=model)


def test_instances_and_classes_become_names_and_configs():
    from distkeras_async import registry

    est = KerasEstimator(
        optimizer=keras.optimizers.SGD(learning_rate=0.25),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics="mae",
        algorithm=registry.get("adag"),
    )
    assert est.getOrDefault("optimizer")["config"]["learning_rate"] == 0.25
    assert est.getOrDefault("loss")["config"]["label_smoothing"] == 0.1
    assert est.getOrDefault("metrics") == ["mae"]
    assert est.getOrDefault("algorithm") == "adag"


def test_fit_needs_a_model_and_a_loss(data):
    with pytest.raises(ValueError, match="'model'"):
        KerasEstimator(loss="mse").fit(data)
    with pytest.raises(ValueError, match="'loss'"):
        KerasEstimator(model=small_mlp()).fit(data)


def test_bad_hyperparameter_for_the_algorithm_fails_before_spark(spark, data):
    sc = spark.sparkContext
    sc.setJobGroup("bad-hyperparameter", "must not run")
    try:
        with pytest.raises(Exception, match="unknown hyperparameter 'moving_rate'"):
            base_estimator(algorithm="downpour", hyperparameters={"moving_rate": 0.5}).fit(data)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert list(sc.statusTracker().getJobIdsForGroup("bad-hyperparameter")) == []


# --- Every Param changes what fit/transform do ------------------------------------------


def test_baseline_trains_and_predicts(baseline, data, digits):
    assert set(steps_per_worker(baseline)) == {0, 1}
    assert {"loss", "accuracy"} <= set(baseline.history[0])
    assert baseline.parameter_server_stats.rounds == 0  # DOWNPOUR is asynchronous
    # One short epoch: the test loss falls well below the untrained model's (about ln 10).
    loss = keras.losses.SparseCategoricalCrossentropy()
    before = float(loss(digits.y_test, small_mlp().predict(digits.x_test, verbose=0)))
    after = float(loss(digits.y_test, baseline.keras_model.predict(digits.x_test, verbose=0)))
    assert after < 0.8 * before
    out = baseline.transform(data)
    # A classifier (cross-entropy) writes Spark's three classifier columns.
    assert out.columns == [*data.columns, "rawPrediction", "probability", "prediction"]
    first = out.first()
    assert len(first.probability) == 10 and first.probability.toArray().sum() == pytest.approx(1)
    assert first.prediction == float(np.argmax(first.probability.toArray()))


def test_use_gpu_param(spark, data, baseline):
    # Not set: tasks on local[2] get no GPUs, so the workers trained on the CPU.
    assert baseline.getUseGpu() is None
    assert {(h["device"], h["gpus"]) for h in baseline.history} == {("cpu:0", "")}
    sc = spark.sparkContext
    sc.setJobGroup("use-gpu", "must not run")
    try:
        # Asked for, GPUs that local mode cannot give fail fit and transform before any job.
        with pytest.raises(DeviceError, match="use_gpu=True"):
            base_estimator(useGpu=True).fit(data)
        on_gpus = baseline.copy()
        on_gpus.set(on_gpus.useGpu, True)
        with pytest.raises(DeviceError, match="use_gpu=True"):
            on_gpus.transform(data)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert list(sc.statusTracker().getJobIdsForGroup("use-gpu")) == []
    assert base_estimator().setUseGpu(False).getUseGpu() is False


def test_shards_and_overlap_params(data, baseline):
    assert baseline.getShards() is None  # not set: the default count (1 on 2 cores)
    assert baseline.getOverlap() is False
    fitted = base_estimator(shards=2, overlap=True).fit(data)
    assert fitted.getShards() == 2 and fitted.getOverlap() is True
    stats = fitted.parameter_server_stats
    assert stats.commits == baseline.parameter_server_stats.commits > 0
    assert all(w.finished for w in stats.workers.values())


def test_model_param(data, baseline):
    fitted = base_estimator(model=small_mlp(hidden=8)).fit(data)
    assert fitted.keras_model.layers[0].units == 8
    assert baseline.keras_model.layers[0].units == 16


def test_optimizer_param(data, baseline):
    model = small_mlp()
    frozen = {"class_name": "SGD", "config": {"learning_rate": 0.0}}
    fitted = base_estimator(model=model, optimizer=frozen).fit(data)
    for got, initial in zip(fitted.keras_model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, initial)
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(baseline.keras_model.get_weights(), model.get_weights(), strict=True)
    ]
    assert all(moved)


def test_loss_param(data, baseline):
    fitted = base_estimator(loss="mean_squared_error").fit(data)
    # Cross-entropy starts near ln(10) = 2.3; the squared error of a softmax is below 0.2.
    assert fitted.history[0]["loss"] < 0.2 < baseline.history[0]["loss"]


def test_metrics_param(data):
    fitted = base_estimator(metrics=["mae"]).fit(data)
    assert "mae" in fitted.history[0]
    assert "accuracy" not in fitted.history[0]


def test_algorithm_param(data):
    # Model averaging is synchronous: the server runs rounds (DOWNPOUR runs none).
    fitted = base_estimator(algorithm="averaging", hyperparameters={}).fit(data)
    assert fitted.parameter_server_stats.rounds > 0


def test_hyperparameters_param(data, baseline):
    fitted = base_estimator(hyperparameters={"communication_window": 1}).fit(data)
    # Every step commits with a window of 1; the baseline (window 4) commits every 4th step,
    # plus once at the end for the steps left over.
    assert fitted.parameter_server_stats.commits == sum(steps_per_worker(fitted).values())
    assert baseline.parameter_server_stats.commits == sum(
        -(-steps // 4) for steps in steps_per_worker(baseline).values()
    )


def test_num_workers_param(data):
    fitted = base_estimator(numWorkers=1).fit(data)
    assert set(steps_per_worker(fitted)) == {0}


def test_num_epochs_param(data, baseline):
    fitted = base_estimator(numEpochs=2).fit(data)
    assert sum(steps_per_worker(fitted).values()) == 2 * sum(steps_per_worker(baseline).values())


def test_batch_size_param(data, baseline):
    fitted = base_estimator(batchSize=64).fit(data)
    total = sum(steps_per_worker(fitted).values())
    assert total < sum(steps_per_worker(baseline).values()) * 0.6


def test_fitted_model_param(baseline, data):
    untrained = small_mlp()
    swapped = baseline.copy().setModel(untrained)
    rows = swapped.transform(data.limit(5)).collect()
    x = np.array([r.features.toArray() for r in rows], np.float32)
    got = np.array([r.probability.toArray() for r in rows])
    np.testing.assert_allclose(got, untrained.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert baseline.keras_model is not untrained  # the copy's Param changed, not the original


def test_column_params(data):
    renamed = data.select(F.col("features").alias("pixels"), F.col("label").alias("target"))
    with pytest.raises(KeyError, match="features"):
        base_estimator().fit(renamed)
    fitted = base_estimator(featuresCol="pixels", labelCol="target", predictionCol="scores").fit(
        renamed
    )
    assert fitted.getFeaturesCol() == "pixels"
    out = fitted.transform(renamed)
    assert out.columns == ["pixels", "target", "rawPrediction", "probability", "scores"]
    assert isinstance(out.first().scores, float)
    # The fitted model's own column Params, changed after fitting.
    moved = (
        fitted.copy()
        .setPredictionCol("p")
        .setFeaturesCol("f")
        ._set(probabilityCol="prob", rawPredictionCol="raw")
    )
    out = moved.transform(renamed.withColumnRenamed("pixels", "f"))
    assert out.columns == ["f", "target", "raw", "prob", "p"]


def test_sparse_labels_with_sparse_cross_entropy(spark):
    """A StringIndexer-style double label (a class index, not one-hot) trains with sparse
    categorical cross-entropy and predicts the classes."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    labels = rng.integers(3, size=300)
    points = centers[labels] + rng.normal(scale=0.5, size=(300, 2))
    rows = [(p.tolist(), float(y)) for p, y in zip(points, labels, strict=True)]
    df = spark.createDataFrame(rows, "features array<double>, label double")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    fitted = KerasEstimator(
        model=model,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        numEpochs=20,
        batchSize=16,
        optimizer=keras.optimizers.Adam(0.05),
    ).fit(df)
    predicted = fitted.transform(df).collect()
    accuracy = np.mean([r.prediction == r.label for r in predicted])  # the class index
    assert accuracy >= 0.9, accuracy


def test_a_single_output_regression_predicts_a_double(spark):
    """One output unit becomes a double prediction column, and the fit learns the line."""
    keras.utils.set_random_seed(0)
    rows = [([float(i % 7), float(i % 3)], float(i % 7 + 2 * (i % 3))) for i in range(200)]
    df = spark.createDataFrame(rows, "features array<double>, label double")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    fitted = KerasEstimator(
        model=model,
        loss="mse",
        metrics=[],
        numEpochs=20,
        batchSize=8,
        optimizer=keras.optimizers.Adam(0.05),
    ).fit(df)
    out = fitted.transform(df).collect()
    assert all(isinstance(r.prediction, float) for r in out)
    error = np.mean([(r.prediction - r.label) ** 2 for r in out])
    variance = np.var([r.label for r in out])
    assert error < 0.1 * variance, (error, variance)  # it learned y = x0 + 2 x1


# --- Persistence --------------------------------------------------------------------------


def test_estimator_save_load_round_trip(spark, tmp_path):
    est = base_estimator(metrics=["mae"], algorithm="adag", predictionCol="p")
    path = str(tmp_path / "estimator")
    est.save(path)
    loaded = KerasEstimator.load(path)
    assert loaded.uid == est.uid
    for param in est.params:
        if param.name != "model" and est.isDefined(param.name):
            assert loaded.getOrDefault(param.name) == est.getOrDefault(param.name), param.name
        assert loaded.isDefined(param.name) == est.isDefined(param.name), param.name
    for got, want in zip(
        loaded.getModel().get_weights(), est.getModel().get_weights(), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(OSError):
        est.save(path)  # Spark's rule: no silent overwrite
    est.write().overwrite().save(path)


def test_fitted_model_save_load_same_predictions(baseline, data, tmp_path):
    path = str(tmp_path / "model")
    baseline.save(path)
    assert (tmp_path / "model" / "model.keras").is_file()  # Keras' own format, not a pickle
    loaded = KerasModel.load(path)
    expected = [r.probability.toArray() for r in baseline.transform(data).collect()]
    got = [r.probability.toArray() for r in loaded.transform(data).collect()]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_loading_the_wrong_class_is_refused(baseline, tmp_path):
    path = str(tmp_path / "model")
    baseline.save(path)
    with pytest.raises(ValueError, match=r"not a 'distkeras_async\.ml\.estimator\.KerasEstimator'"):
        KerasEstimator.load(path)


def test_estimator_inside_a_saved_unfitted_pipeline(spark, tmp_path):
    from pyspark.ml.feature import VectorAssembler

    pipeline = Pipeline(
        stages=[VectorAssembler(inputCols=["a", "b"], outputCol="features"), base_estimator()]
    )
    path = str(tmp_path / "pipeline")
    pipeline.save(path)
    stages = Pipeline.load(path).getStages()
    assert isinstance(stages[1], KerasEstimator)
    assert stages[1].getOrDefault("hyperparameters") == {"communication_window": 4}


def test_pipeline_with_an_estimator_without_a_model_saves_and_loads(spark, tmp_path):
    path = str(tmp_path / "pipeline")
    Pipeline(stages=[KerasEstimator(loss="mse", numEpochs=7)]).save(path)
    (stage,) = Pipeline.load(path).getStages()
    assert not stage.isSet("model")
    assert (stage.getLoss(), stage.getNumEpochs()) == ("mse", 7)


# --- the fitted model carries its training Params; shuffle and seed --------------------------


def test_the_fitted_model_carries_every_training_param(baseline, tmp_path):
    expected = {
        "numEpochs": 1,
        "batchSize": 32,
        "numWorkers": 2,
        "algorithm": "downpour",
        "hyperparameters": {"communication_window": 4},
        "loss": "categorical_crossentropy",
        "shuffle": False,
        "seed": 0,
    }
    got = {p.name: v for p, v in baseline.extractParamMap().items()}
    for name, value in expected.items():
        assert got[name] == value, name
    assert got["optimizer"]["config"]["learning_rate"] == pytest.approx(0.01)
    path = str(tmp_path / "fitted")
    baseline.save(path)
    loaded = {p.name: v for p, v in KerasModel.load(path).extractParamMap().items()}
    for name, value in expected.items():
        assert loaded[name] == value, name


def _single_worker_weights(data, **params):
    keras.utils.set_random_seed(0)
    fitted = base_estimator(numWorkers=1, numEpochs=2, **params).fit(data)
    return np.concatenate([w.ravel() for w in fitted.getModel().get_weights()])


def test_shuffle_and_seed_params_change_the_order_of_training(data):
    """One worker (no interleaving of commits): training is deterministic, so the same seed
    gives the same weights, another seed others, and without shuffling the seed is moot."""
    plain = _single_worker_weights(data)
    np.testing.assert_array_equal(plain, _single_worker_weights(data, seed=5))
    shuffled = _single_worker_weights(data, shuffle=True, seed=1)
    np.testing.assert_array_equal(shuffled, _single_worker_weights(data, shuffle=True, seed=1))
    assert not np.array_equal(shuffled, _single_worker_weights(data, shuffle=True, seed=2))
    assert not np.array_equal(shuffled, plain)


def test_shuffle_and_seed_are_checked():
    with pytest.raises(TypeError, match="shuffle"):
        KerasEstimator(shuffle="yes")
    with pytest.raises(TypeError, match="seed"):
        KerasEstimator(seed=-1)
    assert KerasEstimator(seed=3.0).getSeed() == 3


# --- Validation, callbacks and weights (Spark ML side of `fit`) ---------------------------


def test_validation_col_holds_rows_out_and_fills_the_keras_history(data):
    marked = data.withColumn("is_validation", F.col("label_index") % 4 == 0)
    fitted = base_estimator(numEpochs=3, validationCol="is_validation").fit(marked)
    history = fitted.keras_history.history
    assert fitted.keras_history.epoch == [0, 1, 2]
    assert len(history["val_loss"]) == 3 and len(history["val_accuracy"]) == 3
    training_rows = marked.filter(~F.col("is_validation")).count()
    # Every epoch of every worker covered the training rows only.
    stats = fitted.parameter_server_stats
    assert sum(steps_per_worker(fitted).values()) == 3 * sum(
        -(-rows // 32) for rows in _partition_rows(training_rows, 2)
    ), stats


def _partition_rows(rows: int, workers: int) -> list[int]:
    # Spark's repartition spreads rows round-robin: sizes differ by at most one.
    return [rows // workers + (1 if i < rows % workers else 0) for i in range(workers)]


def test_validation_fraction_with_early_stopping(data):
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=100.0)
    fitted = base_estimator(numEpochs=30, validationFraction=0.2, callbacks=[stopper]).fit(data)
    assert fitted.keras_history.epoch == [0, 1]
    assert stopper.stopped_epoch == 1


def test_class_weight_and_sample_weight_params(data, tmp_path, digits):
    zero_three = {3: 0.0}
    fitted = base_estimator(numEpochs=8, classWeight=zero_three).fit(data)
    predicted = fitted.getModel().predict(digits.x_test, verbose=0).argmax(axis=1)
    assert (predicted[digits.y_test == 3] == 3).mean() < 0.2
    weighted = data.withColumn("w", F.when(F.col("label_index") == 3, 0.0).otherwise(1.0))
    by_column = base_estimator(numEpochs=8, sampleWeightCol="w").fit(weighted)
    predicted = by_column.getModel().predict(digits.x_test, verbose=0).argmax(axis=1)
    assert (predicted[digits.y_test == 3] == 3).mean() < 0.2
    # Saved and loaded: the keys stay class indices; callbacks are not saved.
    est = base_estimator(
        classWeight={3: 0.5}, sampleWeightCol="w", callbacks=[keras.callbacks.TerminateOnNaN()]
    )
    est.save(str(tmp_path / "weighted"))
    loaded = KerasEstimator.load(str(tmp_path / "weighted"))
    assert loaded.getClassWeight() == {3: 0.5}
    assert loaded.getSampleWeightCol() == "w"
    assert loaded.getCallbacks() == []


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"validationCol": "label_index"}, ValueError, "has type bigint; it must be boolean"),
        ({"validationCol": "nope"}, ValueError, "validationCol 'nope' is not a column"),
        (
            {"validationCol": "v", "validationFraction": 0.2},
            ValueError,
            "validationCol or validationFraction, not both",
        ),
        ({"sampleWeightCol": "features"}, ValueError, "it must be numeric"),
        ({"classWeight": {12: 1.0}}, ValueError, "not a class index of this model"),
    ],
)
def test_bad_validation_and_weight_params_fail_before_training(data, params, error, message):
    marked = data.withColumn("v", F.lit(True))
    with pytest.raises(error, match=message):
        base_estimator(**params).fit(marked)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("validationFraction", 1.0, r"fraction in \[0, 1\)"),
        ("classWeight", {"a": 1.0}, "not a class index"),
        ("callbacks", [print], "not a keras.callbacks.Callback"),
        ("sampleWeightCol", "", "must be a non-empty string"),
    ],
)
def test_bad_new_param_values_are_refused(param, value, message):
    with pytest.raises(TypeError, match=message):
        KerasEstimator(**{param: value})

"""Spark ML pipelines: Spark's own stages, KerasEstimator, ArgmaxTransformer, save and reload.

The pipeline test trains on scikit-learn's bundled wine data set (178 wines, 13 chemical
measurements, 3 cultivars named by strings), saves the fitted pipeline, and loads it in a
fresh Spark session in another Python process, which must predict exactly the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import StandardScaler, StringIndexer, VectorAssembler
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql import types as T  # noqa: N812

from distkeras_async.ml import ArgmaxTransformer, KerasEstimator

CULTIVARS = ("barolo", "grignolino", "barbera")


# --- ArgmaxTransformer --------------------------------------------------------------------


def test_argmax_of_vectors_arrays_and_numbers(spark):
    df = spark.createDataFrame(
        [
            (Vectors.dense([0.1, 0.7, 0.2]), [3.0, 1.0, 3.0], 0.7),
            (Vectors.dense([0.5, 0.2, 0.3]), [0.0, 0.0, 1.0], 0.2),
            (None, None, None),
        ],
        T.StructType(
            [
                T.StructField("probability", VectorUDT()),
                T.StructField("scores", T.ArrayType(T.DoubleType())),
                T.StructField("p", T.DoubleType()),
            ]
        ),
    )
    rows = ArgmaxTransformer().transform(df).collect()
    assert [r.prediction for r in rows] == [1.0, 0.0, None]
    rows = ArgmaxTransformer(inputCol="scores", outputCol="i").transform(df).collect()
    assert [r.i for r in rows] == [0.0, 2.0, None]  # ties go to the first maximum
    rows = ArgmaxTransformer(inputCol="p", outputCol="b", threshold=0.5).transform(df).collect()
    assert [r.b for r in rows] == [1.0, 0.0, None]


def test_argmax_refuses_missing_and_text_columns(spark):
    df = spark.createDataFrame([("a",)], "name string")
    with pytest.raises(KeyError, match="probability"):
        ArgmaxTransformer().transform(df)
    with pytest.raises(TypeError, match="vector, array or number"):
        ArgmaxTransformer(inputCol="name").transform(df)


def test_argmax_saves_and_loads(spark, tmp_path):
    stage = ArgmaxTransformer(inputCol="scores", outputCol="index", threshold=0.3)
    stage.save(str(tmp_path / "argmax"))
    loaded = ArgmaxTransformer.load(str(tmp_path / "argmax"))
    assert (loaded.getInputCol(), loaded.getOutputCol(), loaded.getThreshold()) == (
        "scores",
        "index",
        0.3,
    )


# --- A whole pipeline ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def wine(spark):
    """The wine data set as measurement columns plus a string ``cultivar``, split 75/25."""
    from sklearn.datasets import load_wine

    data = load_wine()
    columns = [f"m{i}" for i in range(data.data.shape[1])]
    rows = [
        (i, *map(float, x), CULTIVARS[int(t)])
        for i, (x, t) in enumerate(zip(data.data, data.target, strict=True))
    ]
    df = spark.createDataFrame(rows, ["id", *columns, "cultivar"])
    train, test = df.randomSplit([0.75, 0.25], seed=7)
    return columns, train.cache(), test.orderBy("id").cache()


def wine_pipeline(columns: list[str]) -> Pipeline:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((len(columns),)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(len(CULTIVARS), activation="softmax"),
        ]
    )
    return Pipeline(
        stages=[
            VectorAssembler(inputCols=columns, outputCol="measurements"),
            # The measurements span five orders of magnitude: unscaled, the MLP barely learns.
            StandardScaler(
                inputCol="measurements", outputCol="features", withMean=True, withStd=True
            ),
            StringIndexer(inputCol="cultivar", outputCol="label"),
            KerasEstimator(
                model=model,
                loss="sparse_categorical_crossentropy",
                optimizer={"class_name": "Adam", "config": {"learning_rate": 0.01}},
                numWorkers=2,
                numEpochs=30,
                batchSize=8,
            ),
            # A classifier: KerasModel writes rawPrediction, probability and prediction
            # (the class index), as Spark's own classifiers do.
        ]
    )


LOAD_AND_PREDICT = textwrap.dedent(
    """
    import json, sys
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession

    model_path, data_path, out_path = sys.argv[1:]
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    test = spark.read.parquet(data_path).orderBy("id")
    rows = PipelineModel.load(model_path).transform(test).collect()
    with open(out_path, "w") as f:
        json.dump(
            [[r.id, r.prediction, r.probability.toArray().tolist()] for r in rows], f
        )
    spark.stop()
    """
)


@pytest.mark.slow
def test_pipeline_fits_saves_and_predicts_the_same_in_a_fresh_session(wine, tmp_path):
    columns, train, test = wine
    fitted = wine_pipeline(columns).fit(train)
    predicted = fitted.transform(test)
    accuracy = MulticlassClassificationEvaluator(
        labelCol="label", predictionCol="prediction", metricName="accuracy"
    ).evaluate(predicted)
    print(f"wine: test accuracy {accuracy:.3f} on {test.count()} rows")
    assert accuracy >= 0.9, f"test accuracy {accuracy:.3f}"
    expected = [
        [r.id, r.prediction, r.probability.toArray().tolist()]
        for r in predicted.orderBy("id").collect()
    ]

    model_path = str(tmp_path / "wine-model")
    data_path = str(tmp_path / "wine-test.parquet")
    fitted.save(model_path)
    test.write.parquet(data_path)
    # Reloaded here too: the same process must also get the same answer.
    reloaded = PipelineModel.load(model_path).transform(test).orderBy("id").collect()
    assert [r.prediction for r in reloaded] == [row[1] for row in expected]

    script = tmp_path / "load_and_predict.py"
    script.write_text(LOAD_AND_PREDICT)
    out_path = tmp_path / "predictions.json"
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    done = subprocess.run(
        [sys.executable, str(script), model_path, data_path, str(out_path)],
        check=False,
        cwd=tmp_path,  # nothing shared with this process but the saved files
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(out_path.read_text())
    assert [row[:2] for row in got] == [row[:2] for row in expected]
    np.testing.assert_allclose(
        [row[2] for row in got], [row[2] for row in expected], rtol=1e-5, atol=1e-7
    )


def test_unfitted_pipeline_with_every_stage_saves_and_loads(wine, tmp_path):
    columns, _, _ = wine
    pipeline = wine_pipeline(columns)
    # ArgmaxTransformer stays for users who want it (on the probability column here).
    pipeline.setStages(
        [*pipeline.getStages(), ArgmaxTransformer(inputCol="probability", outputCol="argmax")]
    )
    path = str(tmp_path / "pipeline")
    pipeline.save(path)
    stages = Pipeline.load(path).getStages()
    assert [type(s).__name__ for s in stages] == [
        "VectorAssembler",
        "StandardScaler",
        "StringIndexer",
        "KerasEstimator",
        "ArgmaxTransformer",
    ]
    original = pipeline.getStages()[3]
    loaded = stages[3]
    assert loaded.getOrDefault("numEpochs") == 30
    assert loaded.getOrDefault("optimizer") == original.getOrDefault("optimizer")
    for got, want in zip(
        loaded.getModel().get_weights(), original.getModel().get_weights(), strict=True
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_a_binary_classifier_follows_sparks_contract(spark):
    """One sigmoid unit: probability [1 - p, p], Spark's evaluators take the columns as they
    take LogisticRegressionModel's, and ``thresholds`` moves the predicted class."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    rows = [(Vectors.dense(f), float(y)) for f, y in zip(x, data.target, strict=True)]
    df = spark.createDataFrame(rows, ["features", "label"]).cache()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")])
    fitted = KerasEstimator(
        model=model, loss="binary_crossentropy", metrics=[], numEpochs=10, batchSize=16
    ).fit(df)
    out = fitted.transform(df)
    assert out.columns[-3:] == ["rawPrediction", "probability", "prediction"]
    first = out.first()
    p = first.probability.toArray()
    assert p.shape == (2,) and p.sum() == pytest.approx(1)
    assert first.prediction == float(p[1] > 0.5)
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction").evaluate(out)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    assert auc >= 0.97 and accuracy >= 0.93, (auc, accuracy)
    # Spark's rule: the class with the largest p / t. A tiny threshold for class 1 makes
    # (almost) everything class 1.
    skewed = fitted.copy()._set(thresholds=[1.0, 1e-6]).transform(df)
    assert skewed.filter(F.col("prediction") == 1.0).count() >= 0.95 * df.count()

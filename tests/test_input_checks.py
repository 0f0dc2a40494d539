"""Bad data is refused before the training job, or named by the worker that finds it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql import types as T  # noqa: N812

from distkeras_async import ParameterServer, ParameterServerClient, new_secret
from distkeras_async.datasets import digits_mlp
from distkeras_async.errors import InputDataError, WorkerFailedError
from distkeras_async.spark.jobs import CHECK_GROUP, TRAINING_GROUP
from distkeras_async.trainers import DOWNPOUR
from distkeras_async.trainers.failures import unfinished_workers

VECTORS = T.StructType(
    [T.StructField("features", VectorUDT()), T.StructField("label", VectorUDT())]
)
COMMON = {"num_workers": 2, "batch_size": 32, "num_epoch": 1, "master_port": 0, "progress": False}


def training_jobs(spark) -> set[int]:
    return set(spark.sparkContext.statusTracker().getJobIdsForGroup(TRAINING_GROUP))


def refused_before_training(spark, trainer, df, *patterns: str) -> str:
    before = training_jobs(spark)
    with pytest.raises(InputDataError) as caught:
        trainer.train(df)
    message = str(caught.value)
    for pattern in patterns:
        assert pattern in message, message
    assert training_jobs(spark) == before  # refused before the training job
    return message


def test_an_unwritable_checkpoint_path_fails_before_any_job(spark, digits, tmp_path):
    """A checkpoint path under a regular file fails in a second, not after the whole run."""
    from distkeras_async.errors import CheckpointError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "center.npz"
    trainer = DOWNPOUR(
        digits_mlp(), "adam", "categorical_crossentropy", **COMMON, checkpoint_path=str(path)
    )
    tracker = spark.sparkContext.statusTracker()
    before = {*tracker.getJobIdsForGroup(CHECK_GROUP), *training_jobs(spark)}
    with pytest.raises(CheckpointError, match=f"cannot write checkpoints to {path}: ") as caught:
        trainer.train(digits.train)
    assert str(blocker) in str(caught.value)  # the system's error names the file in the way
    assert {*tracker.getJobIdsForGroup(CHECK_GROUP), *training_jobs(spark)} == before  # no job


def test_an_empty_dataframe_is_refused(spark, digits):
    empty = digits.train.filter(F.col("label_index") > 100)
    refused_before_training(
        spark,
        DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", **COMMON),
        empty,
        "the training DataFrame is empty",
    )


def test_feature_width_that_does_not_match_the_input(spark):
    rows = [(Vectors.dense(np.ones(32)), Vectors.dense(np.eye(10)[i % 10])) for i in range(40)]
    df = spark.createDataFrame(rows, ["features", "label"])
    refused_before_training(
        spark,
        DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", **COMMON),
        df,
        "feature column 'features' has 32 value(s) per row",
        "input takes shape (64,) (64 values)",
    )


def test_label_width_that_does_not_match_the_output(spark, digits):
    five = keras.Sequential([keras.Input((64,)), keras.layers.Dense(5, activation="softmax")])
    refused_before_training(
        spark,
        DOWNPOUR(five, "adam", "categorical_crossentropy", **COMMON),
        digits.train,
        "label column 'label' has 10 value(s) per row",
        "output has shape (5,) (5 values)",
    )


def test_a_scalar_label_with_categorical_crossentropy(spark, digits):
    refused_before_training(
        spark,
        DOWNPOUR(
            digits_mlp(), "adam", "categorical_crossentropy", label_col="label_index", **COMMON
        ),
        digits.train,
        "label column 'label_index' has 1 value(s) per row",
        "one-hot encode it (OneHotEncoder with dropLast=False) or use "
        "sparse_categorical_crossentropy",
    )


def test_a_class_index_out_of_range_for_sparse_crossentropy(spark, digits):
    three = keras.Sequential([keras.Input((64,)), keras.layers.Dense(3, activation="softmax")])
    df = digits.train.orderBy(F.col("label_index").desc())  # the first row has class 9
    refused_before_training(
        spark,
        DOWNPOUR(
            three, "adam", "sparse_categorical_crossentropy", label_col="label_index", **COMMON
        ),
        df,
        "label column 'label_index' holds 9",
        "a class index from 0 to 2",
    )


def test_a_null_vector_in_the_first_row(spark):
    rows = [(None, Vectors.dense(np.eye(10)[0]))] + [
        (Vectors.dense(np.ones(64)), Vectors.dense(np.eye(10)[i % 10])) for i in range(40)
    ]
    df = spark.createDataFrame(rows, VECTORS)
    refused_before_training(
        spark,
        DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", **COMMON),
        df,
        "column 'features' is null in the first row",
    )


def test_columns_that_do_not_match_the_model_inputs(spark, digits):
    refused_before_training(
        spark,
        DOWNPOUR(
            digits_mlp(),
            "adam",
            "categorical_crossentropy",
            features_col=["features", "label_index"],
            **COMMON,
        ),
        digits.train,
        "the model has 1 input(s) but features_col names 2 column(s)",
    )


# --------------------------------------------------------------------------- in the workers


def _data_with(spark, bad_row: int, value) -> object:
    rows = []
    for i in range(200):
        features = Vectors.dense(np.full(64, 0.5))
        if i == bad_row:
            features = value
        rows.append((i, features, Vectors.dense(np.eye(10)[i % 10])))
    # One partition in row order, so the bad row's position in its partition is known.
    schema = T.StructType([T.StructField("id", T.LongType()), *VECTORS.fields])
    return spark.createDataFrame(rows, schema).coalesce(1)


@pytest.mark.slow  # a failed Spark task: its Python worker exits, the next job imports Keras anew
def test_a_null_vector_further_in_is_named_by_the_worker(spark):
    df = _data_with(spark, 120, None)
    trainer = DOWNPOUR(
        digits_mlp(), "adam", "categorical_crossentropy", **{**COMMON, "num_workers": 1}
    )
    with pytest.raises(WorkerFailedError) as caught:
        trainer.train(df)
    message = str(caught.value)
    # The cause leads: the worker, the column, the row and the fix, on the first line.
    first = message.splitlines()[0]
    assert first.startswith("InputDataError: worker 0 (attempt 0)"), first
    assert "column 'features' has 1 null value(s), the first at row 120" in first
    assert "Imputer" in first
    assert "\tat org.apache" not in message  # the JVM stack is left out


@pytest.mark.slow  # a failed Spark task: its Python worker exits, the next job imports Keras anew
def test_a_shorter_vector_further_in_is_named_by_the_worker(spark):
    df = _data_with(spark, 150, Vectors.dense(np.full(63, 0.5)))
    trainer = DOWNPOUR(
        digits_mlp(), "adam", "categorical_crossentropy", **{**COMMON, "num_workers": 1}
    )
    with pytest.raises(WorkerFailedError) as caught:
        trainer.train(df)
    message = str(caught.value)
    assert "worker 0 (attempt 0), in its partition" in message
    assert "row 150 has 63 value(s) where 64 are expected" in message


@pytest.mark.slow  # a failed Spark task: its Python worker exits, the next job imports Keras anew
def test_nan_in_the_features_is_named_by_the_worker(spark):
    df = _data_with(spark, 77, Vectors.dense(np.full(64, np.nan)))
    trainer = DOWNPOUR(
        digits_mlp(), "adam", "categorical_crossentropy", **{**COMMON, "num_workers": 1}
    )
    with pytest.raises(WorkerFailedError) as caught:
        trainer.train(df)
    message = str(caught.value)
    assert "column 'features' has NaN or infinity at row 77 of its partition" in message
    assert "update contains NaN" not in message  # not the misleading server-side symptom


@pytest.mark.slow  # a failed Spark task: its Python worker exits, the next job imports Keras anew
def test_nan_can_be_let_through_on_purpose(spark):
    df = _data_with(spark, 77, Vectors.dense(np.full(64, np.nan)))
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        allow_nonfinite_inputs=True,
        **{**COMMON, "num_workers": 1},
    )
    with pytest.raises(WorkerFailedError) as caught:  # the model cannot handle them
        trainer.train(df)
    message = str(caught.value)
    assert "NaN or infinity at row" not in message  # the input check let them through
    # What stops the run then depends on where the row falls in the window: the server
    # refuses the worker's non-finite update, or the worker sees its loss become NaN first.
    assert "update contains NaN or infinity" in message or "the loss became nan" in message


@pytest.mark.slow  # a failed Spark task: its Python worker exits, the next job imports Keras anew
@pytest.mark.parametrize("value", [12.0, -1.0])
def test_a_class_index_out_of_range_further_in_is_named_by_the_worker(spark, value):
    rows = [
        (Vectors.dense(np.full(64, 0.5)), float(i % 10) if i != 120 else value) for i in range(300)
    ]
    schema = T.StructType(
        [T.StructField("features", VectorUDT()), T.StructField("label_index", T.DoubleType())]
    )
    df = spark.createDataFrame(rows, schema).coalesce(1)  # row 120 of the one partition
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "sparse_categorical_crossentropy",
        label_col="label_index",
        metrics=[],
        **{**COMMON, "num_workers": 1},
    )
    with pytest.raises(WorkerFailedError) as caught:
        trainer.train(df)
    message = str(caught.value)
    assert f"worker 0 (attempt 0): column 'label_index' holds {value:g} at row 120" in message
    assert "a class index from 0 to 9" in message


def test_the_check_jobs_run_under_their_own_group(spark, digits):
    tracker = spark.sparkContext.statusTracker()
    checks = set(tracker.getJobIdsForGroup(CHECK_GROUP))
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", **COMMON)
    trainer.train(digits.train)
    assert len(set(tracker.getJobIdsForGroup(CHECK_GROUP)) - checks) >= 1
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None  # restored


def test_a_failure_says_which_workers_had_not_finished():
    secret = new_secret()
    with ParameterServer(
        [np.zeros(4, np.float32)], "downpour", num_workers=3, secret=secret
    ) as server:
        done = ParameterServerClient("127.0.0.1", server.port, secret, 0)
        done.commit(np.ones(4, np.float32))
        done.close()
        busy = ParameterServerClient("127.0.0.1", server.port, secret, 1, attempt=2)
        busy.commit(np.ones(4, np.float32))
        busy.report({"loss": 0.5, "steps": 37.0})
        text = unfinished_workers(server)
        busy.close()
    assert "worker 0" not in text
    assert "worker 1 (attempt 2): 1 commit(s) applied, last reported step 37" in text
    assert "never connected: worker(s) [2]" in text

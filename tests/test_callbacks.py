"""Training like ``model.fit``: validation on the center, Keras callbacks on the driver at
every global epoch, the Keras History, and the driver's requests reaching the workers."""

from __future__ import annotations

import csv
import re

import keras
import numpy as np
import pytest

from distkeras_async.datasets import digits_mlp
from distkeras_async.spark.jobs import CHECK_GROUP, TRAINING_GROUP
from distkeras_async.trainers import DOWNPOUR, EASGD, AsynchronousEAMSGD

COMMON = {"num_workers": 2, "batch_size": 32, "master_port": 0, "progress": False}


def validation_arrays(digits):
    return digits.x_test, np.eye(10, dtype=np.float32)[digits.y_test]


class Recorder(keras.callbacks.Callback):
    """Every hook call, the logs, and the weights ``self.model`` holds at each epoch's end."""

    def __init__(self, x=None, y=None):
        super().__init__()
        self.calls: list[str] = []
        self.logs: list[dict[str, float]] = []
        self.weights: list[list[np.ndarray]] = []
        self.evaluated: list[dict[str, float]] = []
        self.x, self.y = x, y

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"epoch_begin {epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch}")
        self.logs.append(dict(logs))
        self.weights.append(self.model.get_weights())
        if self.x is not None:
            self.evaluated.append(self.model.evaluate(self.x, self.y, verbose=0, return_dict=True))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append("batch_end")

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def steps_per_worker(trainer) -> dict[int, int]:
    counts: dict[int, int] = {}
    for record in trainer.get_history():
        counts[record["worker"]] = counts.get(record["worker"], 0) + 1
    return counts


def test_validation_runs_on_the_center_at_every_epoch(spark, digits):
    x_val, y_val = validation_arrays(digits)
    recorder = Recorder(x_val, y_val)
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=4, **COMMON)
    trainer.train(digits.train, validation_data=(x_val, y_val), callbacks=[recorder])

    history = trainer.get_keras_history()
    assert history.epoch == [0, 1, 2, 3]
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert recorder.calls == [
        "train_begin",
        *[c for e in range(4) for c in (f"epoch_begin {e}", f"epoch_end {e}")],
        "train_end",
    ]  # no batch hooks on the driver
    # val_* is the model the callbacks see (the center at the epoch's end), evaluated.
    for logs, evaluated in zip(recorder.logs, recorder.evaluated, strict=True):
        assert logs["val_loss"] == pytest.approx(evaluated["loss"], rel=1e-6)
        assert logs["val_accuracy"] == pytest.approx(evaluated["accuracy"], rel=1e-6)
    assert history.history["val_accuracy"][-1] > 0.85
    # loss is the workers' epoch loss averaged: the same per-epoch numbers every worker sent.
    stats = trainer.get_parameter_server_stats()
    for epoch in range(4):
        sent = [w.epochs[epoch + 1]["loss"] for w in stats.workers.values()]
        assert history.history["loss"][epoch] == pytest.approx(np.mean(sent), rel=1e-6)


def test_validation_split_and_a_validation_dataframe(spark, digits):
    trainer = DOWNPOUR(
        digits_mlp(), "adam", "categorical_crossentropy", num_epoch=2, seed=3, **COMMON
    )
    trainer.train(digits.train, validation_split=0.25)
    split = trainer.get_keras_history().history
    assert len(split["val_loss"]) == 2
    # The held-out rows are not trained on: the workers took fewer steps than all rows need.
    all_rows = 2 * 2 * -(-digits.train.count() // 2 // 32)  # 2 epochs of 2 workers
    assert sum(steps_per_worker(trainer).values()) < all_rows

    frame = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=2, **COMMON)
    frame.train(digits.train, validation_data=digits.train.limit(300))
    assert len(frame.get_keras_history().history["val_accuracy"]) == 2


def test_early_stopping_stops_every_worker_and_restores_the_best(spark, digits):
    x_val, y_val = validation_arrays(digits)
    recorder = Recorder()
    # min_delta no epoch can beat: training stops after epoch 1 (Keras never stops at 0).
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=1, min_delta=100.0, restore_best_weights=True
    )
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=40, **COMMON)
    trained = trainer.train(
        digits.train, validation_data=(x_val, y_val), callbacks=[recorder, stopper]
    )
    assert trainer.get_keras_history().epoch == [0, 1]
    assert stopper.stopped_epoch == 1
    # The workers stopped promptly: far fewer than 40 epochs of steps each.
    per_epoch = -(-digits.train.count() // 2 // 32)
    for worker, steps in steps_per_worker(trainer).items():
        assert steps < 10 * per_epoch, (worker, steps)
    # restore_best_weights: the center as it was at the best epoch (the first).
    for got, best in zip(trained.get_weights(), recorder.weights[0], strict=True):
        np.testing.assert_array_equal(got, best)


def eight_times(df):
    """Digits repeated: about 0.5 s per epoch and worker, so each epoch is long against the
    driver's reaction (a poll every 0.1 s and one callback call) and a rate set at an
    epoch's end reaches the workers while they still train."""
    out = df
    for _ in range(7):
        out = out.union(df)
    return out


def test_a_schedule_reaches_every_worker_of_a_synchronous_run(spark, digits):
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.001 / (epoch + 1))
    trainer = EASGD(
        digits_mlp(),
        keras.optimizers.Adam(0.001),
        "categorical_crossentropy",
        num_epoch=3,
        rho=5.0,
        learning_rate=0.09,
        **COMMON,
    )
    trainer.train(eight_times(digits.train), callbacks=[schedule])
    history = trainer.get_keras_history().history
    assert history["learning_rate"] == pytest.approx([0.001, 0.0005, 0.001 / 3], rel=1e-6)
    records = trainer.get_history()
    for worker in (0, 1):
        rates = [r.get("learning_rate") for r in records if r["worker"] == worker]
        set_rates = [r for r in rates if r is not None]
        # Once set, every step ran at the driver's rate, and the rates only went down.
        assert set_rates == rates[rates.index(set_rates[0]) :]
        assert set_rates == sorted(set_rates, reverse=True)
        assert set_rates[-1] == pytest.approx(0.001 / 3, rel=1e-6)
        assert pytest.approx(0.0005, rel=1e-6) in set_rates


def test_reduce_lr_on_plateau_through_the_per_step_path(spark, digits):
    # EAMSGD runs its local steps through train_on_batch, not fit. A min_delta no epoch can
    # beat: the rate halves at the end of every epoch after the first.
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=100.0
    )
    trainer = AsynchronousEAMSGD(
        digits_mlp(), keras.optimizers.SGD(0.05), "categorical_crossentropy", num_epoch=3, **COMMON
    )
    trainer.train(eight_times(digits.train), callbacks=[plateau])
    history = trainer.get_keras_history().history
    # Keras logs the rate an epoch ran at, before the callback lowers it.
    assert history["learning_rate"] == pytest.approx([0.05, 0.05, 0.025], rel=1e-6)
    # Asynchronous workers are not in step: one that finished its third epoch before the
    # driver lowered the rate (say it started a second earlier, with a model its Python
    # worker kept from an earlier job) never hears of it. The worker whose report closed
    # epoch 2 still trains through epoch 3, so the rate reaches it; and every step that
    # records a rate from the driver records this one.
    rates = {
        worker: [
            r["learning_rate"]
            for r in trainer.get_history()
            if r["worker"] == worker and "learning_rate" in r
        ]
        for worker in (0, 1)
    }
    reached = [worker for worker, got in rates.items() if got]
    assert reached, rates
    stats = trainer.get_parameter_server_stats()
    for worker in reached:
        assert rates[worker] == pytest.approx([0.025] * len(rates[worker]), rel=1e-6)
        assert stats.workers[worker].epochs[3]["learning_rate"] == pytest.approx(0.025, rel=1e-6)


def test_checkpoints_csv_and_tensorboard_on_the_driver(spark, digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x_val, y_val = validation_arrays(digits)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_accuracy", save_best_only=True
        ),
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "epoch{epoch}.weights.h5"), save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        keras.callbacks.TerminateOnNaN(),
    ]
    recorder = Recorder()
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=3, **COMMON)
    trainer.train(digits.train, validation_data=(x_val, y_val), callbacks=[*callbacks, recorder])

    best = int(np.argmax(trainer.get_keras_history().history["val_accuracy"]))
    saved = keras.saving.load_model(tmp_path / "best.keras")
    for got, want in zip(saved.get_weights(), recorder.weights[best], strict=True):
        np.testing.assert_array_equal(got, want)
    for epoch in range(3):
        model = digits_mlp()
        model.load_weights(tmp_path / f"epoch{epoch + 1}.weights.h5")
        for got, want in zip(model.get_weights(), recorder.weights[epoch], strict=True):
            np.testing.assert_array_equal(got, want)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[2]["val_loss"]) == pytest.approx(recorder.logs[2]["val_loss"], rel=1e-6)

    events = EventAccumulator(str(tmp_path / "tb" / "train"))
    events.Reload()
    tags = events.Tags()
    scalars = tags.get("scalars", []) + tags.get("tensors", [])
    assert "epoch_loss" in scalars, tags
    validation = EventAccumulator(str(tmp_path / "tb" / "validation"))
    validation.Reload()
    vtags = validation.Tags()
    assert "epoch_loss" in vtags.get("scalars", []) + vtags.get("tensors", []), vtags


def test_a_callback_that_raises_fails_the_run_promptly(spark, digits):
    class Broken(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("the callback broke")

    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=40, **COMMON)
    with pytest.raises(RuntimeError, match="the callback broke"):
        trainer.train(digits.train, callbacks=[Broken()])


def jobs(spark) -> set[int]:
    tracker = spark.sparkContext.statusTracker()
    return {*tracker.getJobIdsForGroup(CHECK_GROUP), *tracker.getJobIdsForGroup(TRAINING_GROUP)}


def _bad_validation(digits, how):
    x = digits.x_test.astype(np.float32)
    y = np.eye(10, dtype=np.float32)[digits.y_test]
    if how == "narrow features":
        return (x[:, :63], y)
    if how == "narrow labels":
        return (x, y[:, :9])
    if how == "nan":
        x = x.copy()
        x[5, 7] = np.nan
        return (x, y)
    index = digits.y_test.astype(np.float32)
    index[3] = 12.0
    return (x, index)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("narrow features", "feature column 'features' has 63 value(s) per row in validation_data"),
        ("narrow labels", "label column 'label' has 9 value(s) per row in validation_data"),
        ("nan", "validation_data: column 'features' has NaN or infinity at row 5"),
        ("class index", "validation_data: column 'label_index' holds 12 at row 3"),
    ],
)
def test_validation_data_is_checked_against_the_model_before_the_training_job(
    spark, digits, how, message
):
    from distkeras_async.errors import InputDataError

    sparse = how == "class index"
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy",
        label_col="label_index" if sparse else "label",
        metrics=[],
        **COMMON,
    )
    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup(TRAINING_GROUP))
    with pytest.raises(InputDataError, match=re.escape(message)):
        trainer.train(digits.train, validation_data=_bad_validation(digits, how))
    assert set(tracker.getJobIdsForGroup(TRAINING_GROUP)) == before  # no epoch was spent


def test_nan_in_validation_data_passes_when_the_run_allows_nonfinite_inputs(digits):
    from distkeras_async.errors import InputDataError
    from distkeras_async.trainers.epochs import Validation
    from distkeras_async.trainers.validation import check_against_model

    x, y = _bad_validation(digits, "nan")
    validation = Validation([x], [y])
    args = (validation, digits_mlp(), "categorical_crossentropy", ["features"], ["label"])
    check_against_model(*args, allow_nonfinite=True)
    with pytest.raises(InputDataError, match="has NaN or infinity at row 5"):
        check_against_model(*args)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"validation_split": 0.0}, ValueError, "validation_split must be in (0, 1)"),
        ({"validation_split": 1.5}, ValueError, "validation_split must be in (0, 1)"),
        ({"validation_split": "half"}, ValueError, "must be a number in (0, 1)"),
        ({"callbacks": [print]}, TypeError, "callbacks[0] is <built-in function print>"),
        ({"validation_data": [1, 2]}, TypeError, "validation_data must be a Spark DataFrame"),
        (
            {"validation_data": (np.zeros((5, 64)), np.zeros((4, 10)))},
            ValueError,
            "different numbers of rows",
        ),
    ],
)
def test_bad_arguments_fail_before_any_spark_job(spark, digits, arguments, error, message):
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=1, **COMMON)
    before = jobs(spark)
    with pytest.raises(error) as caught:
        trainer.train(digits.train, **arguments)
    assert message in str(caught.value)
    assert jobs(spark) == before


def test_a_validation_dataframe_without_the_columns_fails_before_any_job(spark, digits):
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=1, **COMMON)
    before = jobs(spark)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['label'\]"):
        trainer.train(digits.train, validation_data=digits.train.select("features"))
    with pytest.raises(ValueError, match="not both"):
        trainer.train(digits.train, validation_data=digits.train, validation_split=0.2)
    assert jobs(spark) == before


def class_recall(model, digits) -> np.ndarray:
    predicted = model.predict(digits.x_test, verbose=0).argmax(axis=1)
    return np.array([(predicted[digits.y_test == c] == c).mean() for c in range(10)])


def test_a_zero_class_weight_leaves_that_class_unlearned(spark, digits):
    x_val, y_val = validation_arrays(digits)
    weights = {3: 0.0, 5: 2.0}
    row = np.ones(len(y_val), np.float32)
    row[digits.y_test == 3], row[digits.y_test == 5] = 0.0, 2.0
    recorder = Recorder()
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        num_epoch=6,
        class_weight=weights,
        **COMMON,
    )
    model = trainer.train(digits.train, validation_data=(x_val, y_val), callbacks=[recorder])
    recall = class_recall(model, digits)
    assert recall[3] < 0.2, recall
    # Every other class is learned (chance: 0.1). Class 8, the one most like a 3, measured
    # 0.686 in CI's full suite (0.7 and more alone).
    assert np.delete(recall, 3).min() > 0.6, recall
    # Validation weighs its rows the same way.
    last = digits_mlp()
    last.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    last.set_weights(recorder.weights[-1])
    expected = last.evaluate(x_val, y_val, sample_weight=row, verbose=0, return_dict=True)
    assert recorder.logs[-1]["val_loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_a_sample_weight_column_reaches_the_per_step_path(spark, digits):
    from pyspark.sql import functions as F  # noqa: N812

    weighted = digits.train.withColumn(
        "weight", F.when(F.col("label_index") == 3, 0.0).otherwise(1.0)
    )
    trainer = AsynchronousEAMSGD(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        num_epoch=6,
        sample_weight_col="weight",
        **COMMON,
    )
    recall = class_recall(trainer.train(weighted), digits)
    assert recall[3] < 0.2, recall
    assert np.delete(recall, 3).min() > 0.6, recall


@pytest.mark.parametrize(
    ("class_weight", "message"),
    [
        ({10: 1.0}, "class_weight key 10 is not a class index of this model (0 .. 9)"),
        ({"3": 1.0}, "class_weight key '3' is not a class index"),
        ({True: 1.0}, "class_weight key True is not a class index"),
        ({3: -1.0}, "class_weight[3] must be a finite number >= 0"),
        ([1.0], "class_weight must be a dict"),
    ],
)
def test_bad_class_weights_are_refused_at_construction(class_weight, message):
    with pytest.raises(ValueError) as caught:
        DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", class_weight=class_weight)
    assert message in str(caught.value)


def test_a_weight_column_that_is_not_numeric_fails_before_any_job(spark, digits):
    before = jobs(spark)
    for column, message in [
        ("features", "has type vector; it must be numeric"),
        ("w", "not a column"),
    ]:
        trainer = DOWNPOUR(
            digits_mlp(), "adam", "categorical_crossentropy", sample_weight_col=column, **COMMON
        )
        with pytest.raises(ValueError, match=message):
            trainer.train(digits.train)
    assert jobs(spark) == before


@pytest.mark.slow  # a failed Spark task: its Python worker exits, the next job imports Keras anew
def test_a_diverging_run_fails_naming_the_worker_and_the_step(spark, digits):
    from distkeras_async.errors import WorkerFailedError

    trainer = DOWNPOUR(
        digits_mlp(), keras.optimizers.SGD(1e12), "categorical_crossentropy", num_epoch=3, **COMMON
    )
    with pytest.raises(WorkerFailedError) as caught:
        trainer.train(digits.train)
    message = str(caught.value)
    assert "TrainingDivergedError" in message
    assert "the loss became nan at local step" in message or "the loss became inf" in message
    assert "training diverged" in message


def test_terminate_on_nan_stops_the_run_and_keeps_a_finite_center(spark, digits):
    stop = keras.callbacks.TerminateOnNaN()
    trainer = DOWNPOUR(
        digits_mlp(), keras.optimizers.SGD(1e12), "categorical_crossentropy", num_epoch=30, **COMMON
    )
    model = trainer.train(digits.train, callbacks=[stop])
    assert stop.model.stop_training
    assert len(trainer.get_keras_history().epoch) < 30
    for weights in model.get_weights():
        assert np.isfinite(weights).all()
    per_epoch = -(-digits.train.count() // 2 // 32)
    for worker, steps in steps_per_worker(trainer).items():
        assert steps < 10 * per_epoch, (worker, steps)


def test_backup_and_restore_continues_an_interrupted_run(spark, digits, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("the driver was interrupted")

    class Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = self.model.get_weights()

    backup = str(tmp_path / "backup")
    first = Recorder()
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=4, **COMMON)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(
            digits.train,
            callbacks=[keras.callbacks.BackupAndRestore(backup), first, Interrupt()],
        )

    start = Start()
    again = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_epoch=4, **COMMON)
    again.train(digits.train, callbacks=[keras.callbacks.BackupAndRestore(backup), start])
    # It started from the center backed up at the end of epoch 1, and ran epochs 2 and 3.
    for got, saved in zip(start.weights, first.weights[1], strict=True):
        np.testing.assert_array_equal(got, saved)
    assert again.get_keras_history().epoch == [2, 3]
    rows = digits.train.count()
    expected = {w: 2 * -(-n // 32) for w, n in enumerate([rows - rows // 2, rows // 2])}
    assert steps_per_worker(again) == expected


def test_early_stopping_stops_a_synchronous_run(spark, digits):
    x_val, y_val = validation_arrays(digits)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=100.0)
    trainer = EASGD(
        digits_mlp(),
        keras.optimizers.Adam(0.001),
        "categorical_crossentropy",
        num_epoch=40,
        rho=5.0,
        learning_rate=0.09,
        **COMMON,
    )
    trainer.train(digits.train, validation_data=(x_val, y_val), callbacks=[stopper])
    assert trainer.get_keras_history().epoch == [0, 1]
    per_epoch = -(-digits.train.count() // 2 // 32)
    for worker, steps in steps_per_worker(trainer).items():
        assert steps < 10 * per_epoch, (worker, steps)


def test_a_validation_dataframe_too_large_for_the_driver_is_refused(spark, digits, monkeypatch):
    from distkeras_async.trainers import validation

    monkeypatch.setattr(validation, "MAX_VALIDATION_BYTES", 10_000)
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", **COMMON)
    before = set(spark.sparkContext.statusTracker().getJobIdsForGroup(TRAINING_GROUP))
    with pytest.raises(ValueError, match=r"holds 1437 rows of 74 values .* pass a sample"):
        trainer.train(digits.train, validation_data=digits.train)
    assert set(spark.sparkContext.statusTracker().getJobIdsForGroup(TRAINING_GROUP)) == before

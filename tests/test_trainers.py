"""End-to-end training on Spark local[2] with real Keras: scikit-learn's digits, an MLP."""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np
import pytest

from distkeras_async import registry, trainers
from distkeras_async.datasets import digits_mlp
from distkeras_async.demo import TRAINER_NAMES, make_trainer
from distkeras_async.errors import (
    AlgorithmError,
    DeviceError,
    InsufficientSlotsError,
    RoundFailedError,
    RuleFailedError,
    WorkerFailedError,
)
from distkeras_async.rules import DeltaAlgorithm

pytestmark = pytest.mark.slow


def mlp() -> keras.Model:
    return digits_mlp()


COMMON = {"master_port": 0, "progress": False}


@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_trainer_reaches_90_percent_on_digits(name, digits):
    # The demo's documented settings per trainer (docs/trainers.md), with 2 workers.
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    trainer = make_trainer(name, model, workers=2, progress=False)
    trained = trainer.train(digits.train)
    acc = digits.accuracy(trained)
    assert acc >= 0.90, f"{name}: test accuracy {acc:.3f}"
    # The caller's model is untouched; a new model is returned.
    assert trained is not model
    for w, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)
    history = trainer.get_history()
    workers = 1 if name == "SingleTrainer" else 2
    assert {h["worker"] for h in history} == set(range(workers))
    assert all({"loss", "accuracy", "iteration", "timestamp"} <= set(h) for h in history)
    # local[2] gives tasks no GPUs: every worker trained on the CPU, with every GPU hidden.
    assert {(h["device"], h["gpus"]) for h in history} == {("cpu:0", "")}
    averaged = trainer.get_averaged_history()
    assert averaged[-1]["loss"] < averaged[0]["loss"]
    assert trainer.get_training_time() > 0
    # Each worker commits once per communication window, and once more for the local steps
    # left over at the end: no commit is lost and none is counted twice.
    stats = trainer.get_parameter_server_stats()
    window = registry.resolve(trainer.algorithm, **trainer.hyperparameters).communication_window
    steps = [sum(1 for h in history if h["worker"] == w) for w in range(workers)]
    assert stats is not None and stats.commits == sum(-(-s // window) for s in steps)
    print(f"{name}: accuracy {acc:.3f}, {trainer.get_training_time():.1f} s")


def exploding_loss(y_true, y_pred):
    raise ValueError("boom from the worker's loss")


@pytest.fixture
def ship_this_module():
    """Spark workers cannot import the tests: send this module's functions by value."""
    import sys

    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("trainer_class", [trainers.DOWNPOUR, trainers.AveragingTrainer])
def test_worker_exception_reaches_the_driver(trainer_class, digits, ship_this_module):
    train_df = digits.train
    trainer = trainer_class(
        mlp(),
        "adam",
        exploding_loss,
        num_workers=2,
        custom_objects={"exploding_loss": exploding_loss},
        **COMMON,
    )
    with pytest.raises((WorkerFailedError, RoundFailedError), match="boom from the worker's loss"):
        trainer.train(train_df)


class FailingServerRule(DeltaAlgorithm):
    """A plugin with a bug in its server rule: it raises from the fourth commit on."""

    name = "failing-server-rule"

    def server_update(self, out, center, updates, metas):
        if metas[0].version >= 3:
            raise RuntimeError("plugin rule bug at version 3")
        out += updates[0]


class FailingRoundRule(registry.get("averaging")):  # type: ignore[misc]
    """A synchronous plugin whose round rule raises from the third round on."""

    name = "failing-round-rule"

    def server_update(self, out, center, updates, metas):
        if metas[0].version >= 2:
            raise KeyError("round rule bug")
        out[:] = sum(updates) / len(updates)


@pytest.mark.parametrize(
    ("trainer_class", "algorithm", "message"),
    [
        (
            "AsynchronousDistributedTrainer",
            FailingServerRule,
            r"'failing-server-rule': server_update raised RuntimeError: plugin rule bug",
        ),
        (
            "SynchronizedDistributedTrainer",
            FailingRoundRule,
            r"'failing-round-rule': server_update raised KeyError: 'round rule bug'",
        ),
    ],
)
def test_a_plugin_rule_that_raises_fails_the_run_with_its_message(
    trainer_class, algorithm, message, digits, ship_this_module
):
    """The wedge of issue #10: a rule that raises used to leave its receive buffer held, and
    every later commit waited for its own timeout. Now train() raises the rule's error, and
    no worker waited for a timeout to learn it."""
    trainer = getattr(trainers, trainer_class)(
        mlp(),
        "adam",
        "categorical_crossentropy",
        num_workers=2,
        algorithm=algorithm,
        communication_window=2,
        idle_timeout=600,
        round_timeout=600,
        **COMMON,
    )
    began = time.monotonic()
    with pytest.raises(RuleFailedError, match=message) as caught:
        trainer.train(digits.train)
    text = str(caught.value)
    assert "Traceback" in text and "the center was not changed" in text
    assert "TimeoutError" not in text and "within" not in text.split("Traceback", maxsplit=1)[0]
    print(f"{trainer_class}: train() raised after {time.monotonic() - began:.1f} s")


def test_barrier_slot_shortage_fails_before_any_spark_job(digits):
    train_df = digits.train
    trainer = trainers.EASGD(mlp(), "adam", "categorical_crossentropy", num_workers=3, **COMMON)
    tracker = train_df.sparkSession.sparkContext.statusTracker()
    jobs_before = set(tracker.getJobIdsForGroup())
    with pytest.raises(InsufficientSlotsError, match=r"3 workers.*2 task slot"):
        trainer.train(train_df)
    # Refused up front: no stage waited for slots (Spark's default wait is 10 minutes).
    assert set(tracker.getJobIdsForGroup()) == jobs_before


def test_int8_commits_train_as_far_with_a_quarter_of_the_bytes(digits):
    # The demo's DOWNPOUR settings; commits travel as int8 with error feedback.
    trainer = make_trainer("DOWNPOUR", mlp(), workers=2, progress=False, commit_dtype="int8")
    accuracy = digits.accuracy(trainer.train(digits.train))
    assert accuracy >= 0.90, f"test accuracy {accuracy:.3f}"
    stats = trainer.get_parameter_server_stats()
    size = sum(w.size for w in mlp().get_weights())
    # What reached the server: about a byte per parameter and commit, not four.
    assert stats is not None and stats.bytes_in < stats.commits * size * 1.3


def test_int8_both_ways_trains_as_far_with_a_quarter_of_the_bytes_each_way(digits):
    # The demo's DOWNPOUR settings; commits travel as int8 with the worker's error feedback,
    # and after each connection's first reply the center's change as int8 with the server's.
    trainer = make_trainer(
        "DOWNPOUR", mlp(), workers=2, progress=False, commit_dtype="int8", pull_dtype="int8"
    )
    accuracy = digits.accuracy(trainer.train(digits.train))
    assert accuracy >= 0.90, f"test accuracy {accuracy:.3f}"
    stats = trainer.get_parameter_server_stats()
    assert stats is not None
    size = sum(w.size for w in mlp().get_weights())
    pulls = sum(worker.pulls for worker in stats.workers.values())
    assert pulls > 10 * stats.connections_total
    # What left the server: a whole center per connection, then about a byte a parameter.
    assert stats.bytes_out < (pulls * 1.3 + stats.connections_total * 4) * size


@pytest.mark.parametrize("name", ["DOWNPOUR", "EASGD"])
def test_asking_for_gpus_local_mode_cannot_give_fails_before_any_job(digits, name):
    train_df = digits.train
    trainer = getattr(trainers, name)(
        mlp(), "adam", "categorical_crossentropy", use_gpu=True, **COMMON
    )
    tracker = train_df.sparkSession.sparkContext.statusTracker()
    jobs_before = set(tracker.getJobIdsForGroup())
    with pytest.raises(DeviceError, match=r"use_gpu=True, but spark\.task\.resource\.gpu"):
        trainer.train(train_df)
    assert set(tracker.getJobIdsForGroup()) == jobs_before


def test_use_gpu_and_driver_device_are_checked():
    with pytest.raises(ValueError, match="use_gpu must be True, False or None"):
        trainers.DOWNPOUR(mlp(), "adam", "categorical_crossentropy", use_gpu="yes")
    with pytest.raises(ValueError, match="driver_device must be a Keras device name"):
        trainers.DOWNPOUR(mlp(), "adam", "categorical_crossentropy", driver_device="")


def test_synchronous_algorithm_needs_the_synchronized_trainer():
    with pytest.raises(AlgorithmError, match="SynchronizedDistributedTrainer"):
        trainers.AsynchronousDistributedTrainer(
            mlp(), "adam", "categorical_crossentropy", algorithm="easgd"
        )
    with pytest.raises(AlgorithmError, match="AsynchronousDistributedTrainer"):
        trainers.SynchronizedDistributedTrainer(
            mlp(), "adam", "categorical_crossentropy", algorithm="downpour"
        )


def test_bad_arguments_are_named_at_construction():
    with pytest.raises(ValueError, match="num_workers"):
        trainers.DOWNPOUR(mlp(), "adam", "categorical_crossentropy", num_workers=0)
    with pytest.raises(ValueError, match="worker_optimizer"):
        trainers.DOWNPOUR(mlp(), "no-such-optimizer", "categorical_crossentropy")
    with pytest.raises(ValueError, match="built"):
        trainers.DOWNPOUR(keras.Sequential([keras.layers.Dense(3)]), "adam", "mse")
    with pytest.raises(ValueError, match="communication_window"):
        trainers.DOWNPOUR(mlp(), "adam", "mse", communication_window=0)


def test_busy_master_port_is_named(digits):
    import socket

    train_df = digits.train
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        trainer = trainers.DOWNPOUR(
            mlp(), "adam", "categorical_crossentropy", master_port=port, progress=False
        )
        with pytest.raises(OSError, match=f"{port}.*already in use.*master_port=0"):
            trainer.train(train_df)


def test_array_columns_and_a_multi_input_functional_model(spark):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(float)
    rows = [(x[i, :32].tolist(), x[i, 32:].tolist(), int(data.target[i])) for i in range(len(x))]
    df = spark.createDataFrame(rows, "top array<double>, bottom array<double>, digit int")
    keras.utils.set_random_seed(0)
    top, bottom = keras.Input((32,), name="top"), keras.Input((32,), name="bottom")
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()([top, bottom]))
    model = keras.Model([top, bottom], keras.layers.Dense(10, activation="softmax")(hidden))
    trainer = trainers.DOWNPOUR(
        model,
        "adam",
        "sparse_categorical_crossentropy",
        num_workers=2,
        batch_size=32,
        features_col=["top", "bottom"],
        label_col="digit",
        num_epoch=5,
        **COMMON,
    )
    trained = trainer.train(df, shuffle=True)
    predictions = trained.predict([x[:, :32], x[:, 32:]], verbose=0).argmax(axis=1)
    assert (predictions == data.target).mean() > 0.9


def test_sparse_vectors_optimizer_config_and_subclassed_model(spark):
    from pyspark.ml.linalg import Vectors
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data / 16.0
    rows = [
        (Vectors.sparse(64, {j: float(v) for j, v in enumerate(r) if v}), float(t))
        for r, t in zip(x, data.target, strict=True)
    ]
    df = spark.createDataFrame(rows, ["features", "label"])

    @keras.saving.register_keras_serializable(package="tests")
    class Classifier(keras.Model):
        def __init__(self, units=32, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.hidden = keras.layers.Dense(units, activation="relu")
            self.out = keras.layers.Dense(10, activation="softmax")

        def call(self, inputs):
            return self.out(self.hidden(inputs))

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    keras.utils.set_random_seed(0)
    model = Classifier()
    model(np.zeros((1, 64), np.float32))
    optimizer_config = keras.optimizers.serialize(keras.optimizers.Adam(learning_rate=0.01))
    trainer = trainers.DynSGD(
        model,
        optimizer_config,
        "sparse_categorical_crossentropy",
        num_workers=2,
        num_epoch=5,
        custom_objects={"Classifier": Classifier},
        **COMMON,
    )
    trained = trainer.train(df)
    assert isinstance(trained, Classifier)
    assert (trained.predict(x, verbose=0).argmax(axis=1) == data.target).mean() > 0.9


def test_progress_bar_and_center_snapshots(digits, capsys):
    train_df = digits.train
    trainer = trainers.DOWNPOUR(
        mlp(),
        "adam",
        "categorical_crossentropy",
        num_workers=2,
        batch_size=32,
        communication_window=5,
        num_epoch=6,
        master_port=0,
        progress=True,
        snapshot_interval=0.2,
    )
    validation = (digits.x_test, np.eye(10, dtype=np.float32)[digits.y_test])
    trained = trainer.train(train_df, validation_data=validation)
    captured = capsys.readouterr()
    err = captured.err
    assert "DOWNPOUR" in err and "updates" in err and "samples/s" in err
    # One line per global epoch, with its logs, as fit prints them.
    lines = [line for line in captured.out.splitlines() if line.startswith("Epoch ")]
    assert [line.split(" - ")[0] for line in lines] == [f"Epoch {e}/6" for e in range(1, 7)]
    assert all("loss: " in line and "val_accuracy: " in line for line in lines), lines
    snapshots = trainer.get_center_snapshots()
    assert len(snapshots) >= 2
    times = [t for t, _ in snapshots]
    assert times == sorted(times)
    for got, want in zip(snapshots[-1][1], trained.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


# --- TLS and a separate bind address ------------------------------------------------------


class ServerSpy:
    """Records the parameter servers a trainer starts (they stay real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from distkeras_async.trainers import run as training

        self.servers: list[Any] = []
        original = training.make_server

        def record(*args: Any, **kwargs: Any) -> Any:
            server = original(*args, **kwargs)
            server.first_center = server.center_flat  # a copy, before any commit
            self.servers.append(server)
            return server

        monkeypatch.setattr(training, "make_server", record)


def test_a_synchronous_run_checkpoints_at_the_end_and_resumes_from_it(
    digits, tmp_path, monkeypatch
):
    from distkeras_async.server.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "averaging.npz"
    settings = {"num_workers": 2, "num_epoch": 1, "communication_window": 10, **COMMON}
    first = trainers.AveragingTrainer(
        mlp(), "adam", "categorical_crossentropy", checkpoint_path=str(path), **settings
    )
    trained = first.train(digits.train)
    saved = load_checkpoint(path)
    stats = first.get_parameter_server_stats()
    # The end-of-run checkpoint is the returned model, bit for bit, at the run's last version.
    flat = np.concatenate([w.ravel() for w in trained.get_weights()]).astype(np.float32)
    assert saved.center.tobytes() == flat.tobytes()
    assert saved.version == stats.version == stats.rounds > 0
    assert saved.algorithm == "averaging"
    assert saved.hyperparameters == {
        "communication_window": 10,
        "commit_dtype": "float32",
        "pull_dtype": "float32",
    }

    spy = ServerSpy(monkeypatch)
    second = trainers.AveragingTrainer(mlp(), "adam", "categorical_crossentropy", **settings)
    second.train(digits.train, resume_from=str(path))
    (server,) = spy.servers
    assert server.first_center.tobytes() == saved.center.tobytes()  # bit for bit
    resumed = second.get_parameter_server_stats()
    assert resumed.version == saved.version + resumed.rounds

    # Another algorithm, or another window, is refused before any Spark job starts.
    tracker = digits.train.sparkSession.sparkContext.statusTracker()
    jobs = set(tracker.getJobIdsForGroup())
    for wrong in (
        trainers.EASGD(mlp(), "adam", "categorical_crossentropy", **settings),
        trainers.AveragingTrainer(
            mlp(), "adam", "categorical_crossentropy", **{**settings, "communication_window": 3}
        ),
    ):
        with pytest.raises(CheckpointError, match="resume with the"):
            wrong.train(digits.train, resume_from=str(path))
    assert set(tracker.getJobIdsForGroup()) == jobs


def test_training_over_tls(digits, tmp_path, monkeypatch):
    from conftest import make_tls_contexts

    server_ctx, _, cert_path = make_tls_contexts(tmp_path)
    spy = ServerSpy(monkeypatch)
    trainer = make_trainer(
        "DOWNPOUR", mlp(), workers=2, progress=False, ssl_context=server_ctx, tls_ca=str(cert_path)
    )
    trained = trainer.train(digits.train)
    assert digits.accuracy(trained) >= 0.90
    (server,) = spy.servers
    assert server._ssl is server_ctx  # the one listening socket spoke TLS only
    assert trainer.get_parameter_server_stats().commits > 0


def test_workers_refuse_a_server_certificate_they_do_not_trust(digits, tmp_path, monkeypatch):
    from conftest import make_tls_contexts

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    server_ctx, _, _ = make_tls_contexts(tmp_path / "a")
    _, _, other_ca = make_tls_contexts(tmp_path / "b")  # a different self-signed CA
    trainer = trainers.DOWNPOUR(
        mlp(),
        "adam",
        "categorical_crossentropy",
        ssl_context=server_ctx,
        tls_ca=other_ca.read_text(),
        **COMMON,
    )
    with pytest.raises(WorkerFailedError, match="CERTIFICATE_VERIFY_FAILED"):
        trainer.train(digits.train)


def test_tls_arguments_are_checked(tmp_path):
    from conftest import make_tls_contexts

    server_ctx, _, cert_path = make_tls_contexts(tmp_path)
    args = (mlp(), "adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match="both ssl_context"):
        trainers.DOWNPOUR(*args, ssl_context=server_ctx, **COMMON)
    with pytest.raises(ValueError, match="both ssl_context"):
        trainers.DOWNPOUR(*args, tls_ca=str(cert_path), **COMMON)
    with pytest.raises(ValueError, match="neither PEM text nor a file"):
        trainers.DOWNPOUR(*args, ssl_context=server_ctx, tls_ca="no-such-file.pem", **COMMON)
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="no usable CA certificate"):
        trainers.DOWNPOUR(*args, ssl_context=server_ctx, tls_ca=broken, **COMMON)


def test_bind_host_is_where_the_server_listens(digits, monkeypatch):
    # The server listens on bind_host; workers dial master_host, a different name for it.
    spy = ServerSpy(monkeypatch)
    trainer = make_trainer(
        "DOWNPOUR",
        mlp(),
        workers=2,
        epochs=1,
        progress=False,
        master_host="localhost",
        bind_host="127.0.0.1",
    )
    trainer.train(digits.train)
    (server,) = spy.servers
    assert server.host == "127.0.0.1"
    assert trainer.get_parameter_server_stats().commits > 0


@pytest.mark.parametrize(
    ("name", "algorithm"), [("DOWNPOUR", "downpour"), ("AveragingTrainer", "averaging")]
)
def test_a_sharded_server_trains_as_one_server_does(name, algorithm, digits):
    # Two shard processes hold the center; each worker commits its slices to both at once.
    # Five epochs (half the demo's for DOWNPOUR): 0.91 median measured in benchmarks.md.
    trainer = make_trainer(name, mlp(), workers=2, epochs=5, progress=False, shards=2)
    # Validation runs on the center at each epoch's end: every shard's piece of it.
    trained = trainer.train(digits.train, validation_split=0.1)
    assert digits.accuracy(trained) >= 0.85
    assert len(trainer.get_keras_history().history["val_loss"]) == 5
    stats = trainer.get_parameter_server_stats()
    assert stats.commits > 0 and all(w.finished for w in stats.workers.values())
    assert {h["worker"] for h in trainer.get_history()} == {0, 1}


def test_overlapped_exchange_trains_and_refuses_synchronous_rounds(digits):
    trainer = make_trainer("DOWNPOUR", mlp(), workers=2, epochs=5, progress=False, overlap=True)
    assert digits.accuracy(trainer.train(digits.train)) >= 0.85
    # Every local step is in the history and every window was committed once.
    steps = len(trainer.get_history())
    assert trainer.get_parameter_server_stats().commits >= steps // 5
    with pytest.raises(AlgorithmError, match="overlap=True needs an asynchronous algorithm"):
        make_trainer("AveragingTrainer", mlp(), workers=2, overlap=True)

"""Workers on JAX and PyTorch next to TensorFlow: every trainer, custom workers, checkpoints,
prediction, and a KerasEstimator stage trained with its driver on another backend.

This test process (the driver) runs Keras on TensorFlow; a run with ``backend="jax"`` gets
Spark Python workers of its own, which import Keras on JAX (``executor_backend``). The
estimator round trip runs its driver on the other backend in a separate process
(``tests/backend_job.py``) and loads the saved stage here, on TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distkeras_async.datasets import digits_mlp
from distkeras_async.demo import TRAINER_NAMES, make_trainer
from distkeras_async.errors import BackendError, WorkerFailedError
from distkeras_async.server.checkpoint import load_checkpoint
from distkeras_async.spark import ModelPredictor
from distkeras_async.trainers import DOWNPOUR
from distkeras_async.worker import KerasWorker
from distkeras_async.worker.backend import check_backend, select_backend

pytestmark = pytest.mark.slow

BACKENDS = ["jax", "torch"]
COMMON = {"master_port": 0, "progress": False}
JOB = Path(__file__).resolve().parent / "backend_job.py"


class BackendReportingWorker(KerasWorker):
    """Its own local step (``train_on_batch``) records the backend it ran on."""

    def train_step(self, model, batch):
        import keras

        logs = super().train_step(model, batch)
        return {**logs, f"on_{keras.backend.backend()}": 1.0}


@pytest.fixture
def ship_this_module():
    """Spark workers cannot import the tests: send this module's classes by value."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# Each trainer on one of the two other backends, alternating, and DOWNPOUR and EAMSGD (whose
# rule acts at every step) on both: the CI's 20 minutes do not hold all sixteen pairs, and
# the trainers differ only in their rule, which is backend-free numpy on the server.
PAIRS = [(BACKENDS[i % 2], name) for i, name in enumerate(TRAINER_NAMES)]
PAIRS += [
    (BACKENDS[(TRAINER_NAMES.index(name) + 1) % 2], name)
    for name in ("DOWNPOUR", "AsynchronousEAMSGD")
]


@pytest.mark.parametrize(("backend", "name"), PAIRS)
def test_every_trainer_trains_on_another_backend(backend, name, digits):
    """The demo's settings per trainer (as ``test_trainers`` on TensorFlow), 3 epochs."""
    trainer = make_trainer(name, digits_mlp(), workers=2, epochs=3, backend=backend, **COMMON)
    trained = trainer.train(digits.train)
    accuracy = digits.accuracy(trained)
    # Chance is 0.1; on TensorFlow, test_trainers holds these settings to 0.9 at full length.
    assert accuracy >= 0.6, f"{name} on {backend}: test accuracy {accuracy:.3f}"
    assert trainer.get_history()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_custom_step_prediction_and_a_checkpoint_on(backend, digits, tmp_path, ship_this_module):
    path = tmp_path / "center.npz"
    trainer = make_trainer(
        "DOWNPOUR",
        digits_mlp(),
        workers=2,
        epochs=3,
        worker_class=BackendReportingWorker,
        checkpoint_path=str(path),
        backend=backend,
        **COMMON,
    )
    trained = trainer.train(digits.train)
    history = trainer.get_history()
    assert history and all(h.get(f"on_{backend}") == 1.0 for h in history)
    # The device is the backend's own name for where the model's variables live.
    cpu = {"jax": "cpu:0", "torch": "cpu"}[backend]
    assert {(h["device"], h["gpus"]) for h in history} == {(cpu, "")}
    assert digits.accuracy(trained) > 0.8
    # The end-of-run checkpoint is the returned model (the center is backend-free numpy).
    flat = np.concatenate([w.ravel() for w in trained.get_weights()]).astype(np.float32)
    assert load_checkpoint(path).center.tobytes() == flat.tobytes()
    # Executors predict on the backend; the driver (TensorFlow) agrees.
    rows = digits.train.limit(64)
    predicted = ModelPredictor(trained, backend=backend).predict(rows).collect()
    got = np.array([r.prediction.toArray() for r in predicted])
    features = np.array([r.features.toArray() for r in rows.collect()], np.float32)
    np.testing.assert_allclose(got, trained.predict(features, verbose=0), atol=1e-5)


def test_a_stage_trained_with_its_driver_on_jax_loads_on_tensorflow(tmp_path, spark):
    from distkeras_async.ml import KerasModel

    backend = "jax"
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, str(JOB), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["backend"] == backend
    assert report["accuracy"] > 0.7  # 4 epochs of the estimator's defaults; chance is 0.1
    loaded = KerasModel.load(str(tmp_path / "stage"))
    assert loaded.getBackend() == backend
    from distkeras_async.datasets import digits as load

    data = load(spark)
    rows = data.train.orderBy("label_index").limit(len(report["predictions"]))
    ours = [r.prediction for r in loaded.transform(rows).collect()]
    np.testing.assert_allclose(ours, report["predictions"], atol=1e-4)


def test_a_stage_trained_on_torch_workers_saves_and_loads(tmp_path, digits):
    from distkeras_async.ml import KerasEstimator, KerasModel

    fitted = KerasEstimator(
        model=digits_mlp(),
        loss="categorical_crossentropy",
        hyperparameters={"communication_window": 4},
        numEpochs=4,
        backend="torch",
    ).fit(digits.train)
    assert digits.accuracy(fitted.getModel()) > 0.7
    fitted.write().overwrite().save(str(tmp_path / "stage"))
    loaded = KerasModel.load(str(tmp_path / "stage"))
    assert loaded.getBackend() == "torch"
    rows = digits.train.limit(32)
    before = [r.prediction for r in fitted.transform(rows).collect()]
    assert [r.prediction for r in loaded.transform(rows).collect()] == before


def test_a_backend_that_is_unknown_or_missing_fails_before_any_job(digits, monkeypatch):
    with pytest.raises(BackendError, match="one of"):
        DOWNPOUR(digits_mlp(), "adam", "mse", backend="mxnet")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a)
    )
    with pytest.raises(BackendError, match=r"needs the 'jax' package.*distkeras-async\[jax\]"):
        DOWNPOUR(digits_mlp(), "adam", "mse", backend="jax")
    assert check_backend("tensorflow") == "tensorflow"


def test_a_process_running_keras_cannot_switch_backend():
    import keras

    assert keras.backend.backend() == "tensorflow"
    select_backend("tensorflow")
    with pytest.raises(
        BackendError, match=r"already runs Keras on 'tensorflow'.*KERAS_BACKEND=jax"
    ):
        select_backend("jax")


def test_a_worker_error_on_another_backend_reaches_the_driver(digits, ship_this_module):
    class Failing(KerasWorker):
        def prepare(self, model, x, y):
            raise RuntimeError("prepare failed on purpose")

    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        worker_class=Failing,
        backend="torch",
        **COMMON,
    )
    with pytest.raises(WorkerFailedError, match="prepare failed on purpose"):
        trainer.train(digits.train)

"""Customising the worker side (data preparation, local step) without copying the loop."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from distkeras_async.datasets import digits_mlp
from distkeras_async.trainers import DOWNPOUR
from distkeras_async.worker import KerasWorker

pytestmark = pytest.mark.slow


class OneHotCountingWorker(KerasWorker):
    """Turns digit labels into one-hot vectors on the worker and counts its own steps."""

    def prepare(self, model, x, y):
        x, y = super().prepare(model, x, y)
        return x, [np.eye(10, dtype=np.float32)[y[0].astype(int)]]

    def train_step(self, model, batch):
        logs = super().train_step(model, batch)
        self.steps = getattr(self, "steps", 0) + 1
        return {**logs, "custom_steps": float(self.steps)}


@pytest.fixture
def ship_this_module():
    """Spark workers cannot import the tests: send this module's classes by value."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_custom_worker_prepares_data_and_runs_its_own_step(digits, ship_this_module):
    train_df = digits.train
    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        num_workers=2,
        batch_size=32,
        label_col="label_index",
        num_epoch=6,
        master_port=0,
        progress=False,
        worker_class=OneHotCountingWorker,
    )
    trained = trainer.train(train_df)
    history = trainer.get_history()
    for worker in (0, 1):
        steps = [h["custom_steps"] for h in history if h["worker"] == worker]
        assert steps == [float(i + 1) for i in range(len(steps))]
    assert digits.accuracy(trained) > 0.9


def test_worker_class_must_be_a_keras_worker():
    with pytest.raises(TypeError, match="KerasWorker"):
        DOWNPOUR(digits_mlp(), "adam", "mse", worker_class=object)

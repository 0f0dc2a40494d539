"""The driver's epoch loop against a real parameter server, without Spark: when epochs end,
what the callbacks see, and the order of events."""

from __future__ import annotations

import keras
import numpy as np

from distkeras_async.datasets import digits_mlp
from distkeras_async.trainers.epochs import EpochCallbacks, epoch_logs
from distkeras_async.worker.requests import DIVERGED_METRIC


class Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch} loss={logs['loss']}")

    def on_batch_end(self, batch, logs=None):
        self.events.append(f"batch_end {batch}")


def driver_model():
    model = digits_mlp(hidden=4)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def test_epochs_that_ended_run_before_a_divergence_stops_the_run(make_server, connect):
    model = driver_model()
    server = make_server(model.get_weights(), "downpour", num_workers=2)
    stop, seen = keras.callbacks.TerminateOnNaN(), Seen()
    epochs = EpochCallbacks(model, [seen, stop], num_workers=2, num_epoch=5)
    epochs.train_begin()
    first, second = connect(server, 0), connect(server, 1)
    for client in (first, second):
        client.pull()
        client.report({"loss": 0.5}, epoch=1)
    first.report({DIVERGED_METRIC: 40.0})  # epoch 2's step 40 diverged on worker 0
    epochs.watch(server)  # epoch 1 ended before the divergence was seen: it runs first
    epochs.end(server.center)
    assert seen.events == ["epoch_end 0 loss=0.5"]
    assert model.stop_training and epochs.stopped
    assert server.control.stop
    assert epochs.history.epoch == [0]


def test_an_epoch_waits_for_every_worker_not_for_a_finished_one(make_server, connect):
    model = driver_model()
    server = make_server(model.get_weights(), "downpour", num_workers=2)
    seen = Seen()
    epochs = EpochCallbacks(model, [seen], num_workers=2, num_epoch=3)
    epochs.train_begin()
    first, second = connect(server, 0), connect(server, 1)
    first.report({"loss": 1.0}, epoch=1)
    assert epoch_logs(server.stats(), 1, 2) is None  # worker 1 has not finished epoch 1
    epochs.watch(server)
    second.report({"loss": 3.0}, epoch=1)
    second.close()  # finished: it does not hold epochs 2 and 3 up
    first.report({"loss": 0.5}, epoch=2)
    center = epochs.end(server.center)
    assert seen.events == ["epoch_end 0 loss=2.0", "epoch_end 1 loss=0.5"]
    for got, want in zip(center, server.center, strict=True):
        np.testing.assert_array_equal(got, want)

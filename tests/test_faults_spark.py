"""Faults during real Spark training: a synchronous worker that never arrives, and a training
run killed midway then resumed from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from distkeras_async.datasets import digits_mlp
from distkeras_async.errors import RoundFailedError
from distkeras_async.server.checkpoint import load_checkpoint
from distkeras_async.trainers import DOWNPOUR, EASGD
from distkeras_async.worker import KerasWorker

pytestmark = [pytest.mark.slow, pytest.mark.stress]

# Two workers through one epoch of digits in windows of 5 steps (23 steps each).
SMALL_RUN = {
    "num_workers": 2,
    "num_epoch": 1,
    "batch_size": 32,
    "communication_window": 5,
    "master_port": 0,
    "progress": False,
}


class NeverArrives(KerasWorker):
    """Worker 1 hangs before connecting, as a task stuck on a dead executor would."""

    def run(self, x, y):
        if self.worker_id == 1:
            threading.Event().wait(600)
        return super().run(x, y)


class SlowSteps(KerasWorker):
    """Every local step takes 0.4 s more, so a window of 5 steps keeps the worker silent
    towards the server for over 2 s."""

    def train_step(self, model, batch):
        time.sleep(0.4)  # ok: the slow step under test
        return super().train_step(model, batch)


class DiesAtItsThirdStep(KerasWorker):
    """Worker 1's Python process is killed (SIGKILL) at its third local step."""

    def train_step(self, model, batch):
        self.steps = getattr(self, "steps", 0) + 1
        if self.worker_id == 1 and self.steps == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train_step(model, batch)


@pytest.fixture
def ship_this_module():
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("trainer_class", [DOWNPOUR, EASGD])
def test_a_window_longer_than_the_frame_timeout_trains(
    spark, digits, ship_this_module, trainer_class
):
    """A worker silent for longer than the frame timeout (shortened to 1 s here; 60 s by
    default) between two exchanges is computing, not stalled mid-frame: only idle_timeout
    governs that silence (docs/reliability.md)."""
    trainer = trainer_class(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        **SMALL_RUN,
        frame_timeout=1.0,
        worker_class=SlowSteps,
    )
    trainer.train(digits.train)
    stats = trainer.get_parameter_server_stats()
    # Every window was committed (one epoch of 2 x 23 steps in windows of 5) and no
    # connection was cut for a limit.
    assert {record["worker"] for record in trainer.get_history()} == {0, 1}
    assert stats.commits >= 8 and stats.rejected == 0, stats


@pytest.mark.parametrize("watcher", ["polling", "lagging"])
def test_a_failed_final_checkpoint_hands_over_the_trained_model(
    spark, digits, tmp_path, monkeypatch, watcher
):
    """The checkpoint folder becomes unwritable during the last epoch: the run still returns
    its work, as the CheckpointError's model (docs/reliability.md). With the epoch watcher
    lagging the job (it polls once a minute here), the last epochs' callbacks still run before
    the final checkpoint."""
    import keras

    from distkeras_async.errors import CheckpointError
    from distkeras_async.trainers import epochs as epoch_callbacks

    if watcher == "lagging":
        monkeypatch.setattr(epoch_callbacks, "POLL_SECONDS", 60.0)

    folder = tmp_path / "run"
    epochs = 3

    class BreakTheFolder(keras.callbacks.Callback):
        """At the last epoch's end (on the driver), the folder turns into a regular file."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == epochs - 1:
                for leftover in folder.iterdir():
                    leftover.unlink()
                folder.rmdir()
                folder.write_text("not a folder any more")

    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        **{**SMALL_RUN, "num_epoch": epochs},
        checkpoint_path=str(folder / "center.npz"),
        checkpoint_interval=3600,  # only the final checkpoint after the first
    )
    with pytest.raises(CheckpointError, match="final checkpoint could not be written") as caught:
        trainer.train(digits.train, callbacks=[BreakTheFolder()])
    model = caught.value.model
    assert model is not None and digits.accuracy(model) > 0.85  # the trained model, not lost


def test_a_killed_worker_is_named_first(spark, digits, ship_this_module):
    """With retries off (local mode), a worker whose process died is named on the error's
    first line, before the list of unfinished workers and Spark's own text."""
    from distkeras_async.errors import WorkerFailedError

    trainer = DOWNPOUR(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        **SMALL_RUN,
        worker_class=DiesAtItsThirdStep,
    )
    with pytest.raises(WorkerFailedError) as caught:
        trainer.train(digits.train)
    first = str(caught.value).splitlines()[0]
    assert first.startswith("worker 1 (attempt 0) died: "), first
    assert "Python worker exited unexpectedly" in first, first
    assert "\tat org.apache" not in str(caught.value)  # no JVM stack


def test_a_synchronous_worker_that_never_arrives_fails_the_run_fast(
    spark, digits, ship_this_module
):
    trainer = EASGD(
        digits_mlp(),
        "adam",
        "categorical_crossentropy",
        num_workers=2,
        num_epoch=1,
        master_port=0,
        progress=False,
        round_timeout=3,
        worker_class=NeverArrives,
    )
    # The round's own 3 s timeout fails the run: no worker waits for its client timeout.
    with pytest.raises(RoundFailedError, match=r"timed out after 3 s: worker\(s\) \[1\]"):
        trainer.train(digits.train)
    assert digits.train.count() > 0  # the Spark job ended: the cluster takes new work at once


TRAINING_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    from distkeras_async.datasets import digits, digits_mlp
    from distkeras_async.demo import start_spark
    from distkeras_async.trainers import DOWNPOUR

    spark = start_spark(2)
    trainer = DOWNPOUR(digits_mlp(), "adam", "categorical_crossentropy", num_workers=2,
                       batch_size=32, communication_window=2, num_epoch=500, master_port=0,
                       progress=False, checkpoint_path=sys.argv[1], checkpoint_every=5)
    trainer.train(digits(spark).train)
    """
)


def test_a_run_killed_midway_resumes_from_its_checkpoint(digits, tmp_path, monkeypatch):
    checkpoint = tmp_path / "center.npz"
    script = tmp_path / "train.py"
    script.write_text(TRAINING_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), str(checkpoint)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (checkpoint.exists() and load_checkpoint(checkpoint).version >= 20):
            assert process.poll() is None, "the training run ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)  # ok: polling for a file another process writes, bounded
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver, its JVM and its workers
        process.wait(30)
    saved = load_checkpoint(checkpoint)
    model = digits_mlp()
    model.set_weights(saved.layout.unflatten(saved.center))
    accuracy_at_kill = digits.accuracy(model)

    from distkeras_async.trainers import run as training

    first_centers = []
    original = training.make_server

    def record(*args, **kwargs):
        server = original(*args, **kwargs)
        first_centers.append(server.center_flat)  # what it serves before any commit
        return server

    monkeypatch.setattr(training, "make_server", record)
    trainer = DOWNPOUR(
        digits_mlp(seed=1),
        "adam",
        "categorical_crossentropy",
        num_workers=2,
        batch_size=32,
        communication_window=2,  # the killed run's: a resume must not change the rule
        num_epoch=8,
        master_port=0,
        progress=False,
    )
    trained = trainer.train(digits.train, resume_from=str(checkpoint))
    (first,) = first_centers
    assert first.tobytes() == saved.center.tobytes()  # the checkpoint, bit for bit
    stats = trainer.get_parameter_server_stats()
    # The resumed center started at the checkpoint's version, and from its weights (a
    # different seed would start far from a trained model).
    assert stats.version == saved.version + stats.commits
    assert accuracy_at_kill > 0.5
    assert digits.accuracy(trained) >= accuracy_at_kill - 0.02
    assert digits.accuracy(trained) > 0.9

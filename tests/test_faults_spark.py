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


class NeverArrives(KerasWorker):
    """Worker 1 hangs before connecting, as a task stuck on a dead executor would."""

    def run(self, x, y):
        if self.worker_id == 1:
            threading.Event().wait(600)
        return super().run(x, y)


@pytest.fixture
def ship_this_module():
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


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

    from distkeras_async.trainers import base as training

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

"""Runs whose worker may be killed mid-run, for ``tests/test_retries.py``.

Run as ``python retry_job.py RESULT.json KILL:ON_RETRY[:RULE] ...`` (KILL: ``kill`` or
``none``), the runs one after the other in one Spark session (its start and the Python
workers' Keras imports are paid once). Spark runs on ``local[2,3]``: two cores, and every
task may be retried (3 attempts). With ``kill``, a driver thread waits until the last worker
has 20 commits applied, then sends SIGKILL to the Python process running it (it wrote its
pid to a file when it started); Spark retries the task.

Without RULE, a run is DOWNPOUR with two workers and Adam. With RULE ``momentum`` it is one
worker under a rule whose worker keeps state (a momentum of its deltas, carried to the server
with each commit and back to the retry), plain SGD (no optimizer state), no shuffle and the
same initial weights: deterministic, so a resumed run must end bit for bit where an
undisturbed one does; ``momentum-lost`` is the same with the rule's state not carried (the
control that shows the state matters).

The result JSON holds, per run, what the test compares: commits applied per worker, the steps
and attempts in the history, whether steps were marked retried, the accuracy, and for the
rule runs the final center's bytes (hex).

Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pyspark.sql import SparkSession

from distkeras_async import delta_rule
from distkeras_async.datasets import digits, digits_mlp
from distkeras_async.trainers import DOWNPOUR, AsynchronousDistributedTrainer
from distkeras_async.trainers import run as training
from distkeras_async.transforms import momentum
from distkeras_async.worker import KerasWorker

KILL_AFTER_COMMITS = 20


class PidWorker(KerasWorker):
    """Writes the pid of the Python process that runs it, so the driver can kill it."""

    # Set per run before training: cloudpickle ships this class of __main__ by value, with
    # its attributes as they are then.
    pid_dir = ""

    def run(self, x: Any, y: Any) -> Any:
        pid_file = Path(type(self).pid_dir, f"worker-{self.worker_id}-attempt-{self.attempt}.pid")
        pid_file.write_text(str(os.getpid()))
        return super().run(x, y)


class StateLostWorker(PidWorker):
    """A worker that neither sends its rule's state nor resumes with it (the control)."""

    def run(self, x: Any, y: Any) -> Any:
        from distkeras_async.worker import training as worker_training

        worker_training.carry_rule_state = lambda algorithm, client: None  # type: ignore[assignment]
        return super().run(x, y)


MomentumDownpour = delta_rule(
    "retry-momentum-downpour",
    "DOWNPOUR whose worker commits a momentum of its changes (state on the worker).",
    worker=momentum(0.9),
)


def killer(servers: list[Any], pids: Path, killed: dict[str, Any], worker_id: int = 1) -> None:
    """Wait for the worker's 20th commit, SIGKILL its Python process, record what was applied."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.02)  # ok: polling another thread's server, bounded
        if not servers or not servers[0].running:
            continue
        stats = servers[0].stats()
        worker = stats.workers.get(worker_id)
        pid_file = pids / f"worker-{worker_id}-attempt-0.pid"
        if worker and worker.commits >= KILL_AFTER_COMMITS and pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            # Count what the killed attempt got applied once it is gone: a commit can land
            # between reading the stats above and the signal. The retry needs seconds to
            # start (a new Python worker imports Keras), so nothing of it is counted here.
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.01)  # ok: waiting for the killed process, bounded
            time.sleep(0.3)  # ok: let the server apply what had reached its socket
            applied = servers[0].stats().workers[worker_id].commits
            killed.update(commits_at_kill=applied, steps_at_kill=servers[0].progress(worker_id))
            return


def guarded(servers: list[Any], pids: Path, killed: dict[str, Any], worker_id: int) -> None:
    """Run :func:`killer`; record why it failed instead of dying silently with its thread."""
    try:
        killer(servers, pids, killed, worker_id)
    except Exception as exc:  # reported in the result JSON, asserted absent by the test
        killed["killer_error"] = repr(exc)


def make_trainer(rule: str, on_retry: str, worker_class: type[PidWorker]) -> Any:
    """The run's trainer: DOWNPOUR with two workers, or one worker under a stateful rule."""
    if not rule:
        return DOWNPOUR(
            digits_mlp(),
            "adam",
            "categorical_crossentropy",
            num_workers=2,
            batch_size=16,
            communication_window=3,
            num_epoch=6,
            master_port=0,
            progress=False,
            worker_class=worker_class,
            on_retry=on_retry,
        )
    return AsynchronousDistributedTrainer(
        digits_mlp(seed=0),  # the same initial weights in every run
        "sgd",
        "categorical_crossentropy",
        num_workers=1,
        batch_size=16,
        num_epoch=3,
        master_port=0,
        progress=False,
        worker_class=StateLostWorker if rule == "momentum-lost" else worker_class,
        on_retry=on_retry,
        algorithm=MomentumDownpour,
        communication_window=3,
    )


def run(data: Any, kill: str, on_retry: str, rule: str = "") -> dict[str, Any]:
    """One run (its last worker killed midway when ``kill == "kill"``); what it applied."""
    servers: list[Any] = []
    original = training.make_server

    def record(*args: Any, **kwargs: Any) -> Any:
        server = original(*args, **kwargs)
        servers.append(server)
        return server

    pids = Path(tempfile.mkdtemp(prefix="distkeras-pids-"))
    PidWorker.pid_dir = str(pids)
    killed: dict[str, Any] = {}
    training.make_server = record  # type: ignore[assignment]
    try:
        trainer = make_trainer(rule, on_retry, PidWorker)
        victim = 0 if rule else 1
        if kill == "kill":
            threading.Thread(
                target=guarded, args=(servers, pids, killed, victim), daemon=True
            ).start()
        trained = trainer.train(data.train)
    finally:
        training.make_server = original  # type: ignore[assignment]
    stats = trainer.get_parameter_server_stats()
    history = trainer.get_history()
    return {
        "commits": {str(w): s.commits for w, s in stats.workers.items()},
        "attempts": {str(w): s.attempt for w, s in stats.workers.items()},
        "duplicates": sum(s.duplicates for s in stats.workers.values()),
        "final_steps": {
            str(w): sorted(
                h["iteration"] for h in history if h["worker"] == w and not h.get("retried")
            )
            for w in stats.workers
        },
        "retried_steps": sorted(h["iteration"] for h in history if h.get("retried")),
        "retried_attempts": sorted({h["attempt"] for h in history if h.get("retried")}),
        "accuracy": data.accuracy(trained),
        "center": servers[0].center_flat.tobytes().hex() if rule else "",
        **killed,
    }


def main(result_path: str, *runs: str) -> None:
    """Run each ``KILL:ON_RETRY`` in turn in one Spark session; write their results."""
    spark = (
        SparkSession.builder.master("local[2,3]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    data = digits(spark)
    results = {}
    try:
        for spec in runs:
            kill, on_retry, *rule = spec.split(":")
            results[spec] = run(data, kill, on_retry, *rule)
    finally:
        Path(result_path).write_text(json.dumps(results))
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:])

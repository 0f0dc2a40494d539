"""A DOWNPOUR run whose worker 1 may be killed mid-run, for ``tests/test_retries.py``.

Run as ``python retry_job.py RESULT.json KILL:ON_RETRY ...`` (KILL: ``kill`` or ``none``), the
runs one after the other in one Spark session (its start and the Python workers' Keras
imports are paid once). Spark runs on ``local[2,3]``: two cores, and every task may be
retried (3 attempts). With ``kill``,
a driver thread waits until worker 1 has 20 commits applied, then sends SIGKILL to the Python
process running it (it wrote its pid to a file when it started); Spark retries the task.
The result JSON holds, per run, what the test compares: commits applied per worker, the steps and
attempts in the history, whether steps were marked retried, and the accuracy.

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

from distkeras_async.datasets import digits, digits_mlp
from distkeras_async.trainers import DOWNPOUR
from distkeras_async.trainers import run as training
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


def killer(servers: list[Any], pids: Path, killed: dict[str, Any]) -> None:
    """Wait for worker 1's 20th commit, SIGKILL its Python process, record what was applied."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.02)  # ok: polling another thread's server, bounded
        if not servers or not servers[0].running:
            continue
        stats = servers[0].stats()
        worker = stats.workers.get(1)
        pid_file = pids / "worker-1-attempt-0.pid"
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
            applied = servers[0].stats().workers[1].commits
            killed.update(commits_at_kill=applied, steps_at_kill=servers[0].progress(1))
            return


def guarded(servers: list[Any], pids: Path, killed: dict[str, Any]) -> None:
    """Run :func:`killer`; record why it failed instead of dying silently with its thread."""
    try:
        killer(servers, pids, killed)
    except Exception as exc:  # reported in the result JSON, asserted absent by the test
        killed["killer_error"] = repr(exc)


def run(data: Any, kill: str, on_retry: str) -> dict[str, Any]:
    """One DOWNPOUR run (worker 1 killed midway when ``kill == "kill"``); what it applied."""
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
        if kill == "kill":
            threading.Thread(target=guarded, args=(servers, pids, killed), daemon=True).start()
        trainer = DOWNPOUR(
            digits_mlp(),
            "adam",
            "categorical_crossentropy",
            num_workers=2,
            batch_size=16,
            communication_window=3,
            num_epoch=6,
            master_port=0,
            progress=False,
            worker_class=PidWorker,
            on_retry=on_retry,
        )
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
            for w in (0, 1)
        },
        "retried_steps": sorted(h["iteration"] for h in history if h.get("retried")),
        "retried_attempts": sorted({h["attempt"] for h in history if h.get("retried")}),
        "accuracy": data.accuracy(trained),
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
            kill, on_retry = spec.split(":")
            results[spec] = run(data, kill, on_retry)
    finally:
        Path(result_path).write_text(json.dumps(results))
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:])

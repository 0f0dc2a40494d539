"""Exactly-once work under task retries: a killed asynchronous worker's retry resumes.

One fresh process runs the same DOWNPOUR job three times on ``local[2,3]`` (every task may be
retried):
one undisturbed, one whose worker 1 is killed with SIGKILL after 20 commits and resumes
(``on_retry="resume"``, the default), and one that restarts its partition instead. The
commits applied per worker, the steps in the history and the attempts tell exactly-once from
twice. Then three deterministic one-worker runs under a rule whose worker keeps state (a
momentum of its deltas): undisturbed, killed and resumed with the state the server kept, and
killed without the state travelling (the control).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.stress]

HERE = Path(__file__).resolve().parent


def run_jobs(tmp_path: Path, *runs: str) -> dict:
    result = tmp_path / "runs.json"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run(
        [sys.executable, str(HERE / "retry_job.py"), str(result), *runs],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results: dict = json.loads(result.read_text())
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    results = run_jobs(
        tmp_path_factory.mktemp("retries"),
        "none:resume",
        "kill:resume",
        "kill:restart",
        "none:resume:momentum",
        "kill:resume:momentum",
        "kill:resume:momentum-lost",
    )
    return {
        "undisturbed": results["none:resume"],
        "resumed": results["kill:resume"],
        "restarted": results["kill:restart"],
        "stateful": results["none:resume:momentum"],
        "stateful-resumed": results["kill:resume:momentum"],
        "stateful-lost": results["kill:resume:momentum-lost"],
    }


def test_a_resumed_retry_applies_every_step_exactly_once(runs):
    undisturbed, resumed = runs["undisturbed"], runs["resumed"]
    assert undisturbed["attempts"] == {"0": 0, "1": 0}
    assert "killer_error" not in resumed
    assert resumed["attempts"]["1"] == 1  # worker 1 was killed and retried
    assert resumed["commits_at_kill"] >= 20
    # The same commits per worker as the run without the kill: nothing applied twice, nothing
    # lost (the killed attempt's last uncommitted steps were redone by the retry).
    assert resumed["commits"] == undisturbed["commits"]
    assert resumed["duplicates"] == 0
    # The retry started where the applied steps ended and went on to the same last step.
    steps = undisturbed["final_steps"]["1"]
    retry = resumed["final_steps"]["1"]
    assert retry == list(range(retry[0], steps[-1] + 1))
    assert retry[0] > 0 and retry[0] % 3 == 0  # after a whole number of windows (of 3)
    # The killed attempt's steps are in the history, marked, and they are exactly the
    # applied ones: together with the retry's, every step of the partition once.
    assert resumed["retried_attempts"] == [0]
    assert resumed["retried_steps"] + retry == steps
    assert resumed["accuracy"] >= 0.9


def test_a_restarted_retry_counts_the_killed_attempts_work_again(runs):
    undisturbed, restarted = runs["undisturbed"], runs["restarted"]
    assert "killer_error" not in restarted
    assert restarted["attempts"]["1"] == 1
    # Worker 0 is untouched; worker 1's partition was trained twice in part.
    assert restarted["commits"]["0"] == undisturbed["commits"]["0"]
    assert restarted["commits"]["1"] == undisturbed["commits"]["1"] + restarted["commits_at_kill"]
    assert restarted["final_steps"]["1"] == undisturbed["final_steps"]["1"]  # all from step 0
    assert restarted["retried_attempts"] == [0]


def test_a_resumed_retry_continues_with_its_rules_state_bit_for_bit(runs):
    undisturbed, resumed = runs["stateful"], runs["stateful-resumed"]
    lost = runs["stateful-lost"]
    for run in (resumed, lost):
        assert "killer_error" not in run
        assert run["attempts"] == {"0": 1} and run["commits_at_kill"] >= 20
        assert run["commits"] == undisturbed["commits"]
    # The retry got the momentum its predecessor had at its last applied commit: the run
    # ends on the undisturbed run's center, every bit of it.
    assert resumed["center"] == undisturbed["center"]
    # Without the state the retry restarts the momentum at zero and ends elsewhere: the
    # comparison above can fail.
    assert lost["center"] != undisturbed["center"]

"""Training on a real Spark standalone cluster: a master and two workers, separate processes.

The Workers advertise two fake GPUs each through a discovery script (Spark schedules them
like real ones), so the test also checks that each worker's backend sees exactly its task's
GPUs, or none on ``use_gpu=False`` (:func:`check_gpu_binding`).

Every other Spark test runs an embedded ``local[2]``, where the driver, the executors and the
tests share one JVM, one machine and one working directory. Here pyspark's own launcher
(``bin/spark-class``) starts a standalone Master and two Workers (1 core each) as separate
processes, and ``bin/spark-submit`` runs ``tests/cluster_job.py`` against them from an empty
directory: executors are launched by the Workers in their own work directories, import the
package from the interpreter's environment, and reach the parameter server on the driver
over TCP, exactly as on a real cluster (only all on 127.0.0.1).

The executors' Python comes from the wheel, as a user's would: the test runs in ``.ci/run``'s
wheel run (marked ``wheel``), where this interpreter's virtual environment holds the installed
wheel and its dependencies and nothing else of the checkout. It runs both recipes of
``docs/cluster.md`` and checks that the executors followed them:

- ``archives``: ``venv-pack`` packs that environment, ``spark.archives`` ships it to every
  executor (unpacked as ``environment/`` in its working directory) and ``spark.pyspark.python``
  points the Python workers into it;
- ``py-files``: the nodes hold the dependencies only (a copy of the environment without
  distkeras-async), and the wheel travels with ``--py-files`` under a ``.zip`` name.

Every process is started in a session of its own (``start_new_session``), so that teardown
can stop each one with everything it spawned (executor JVMs, Python workers) and then check
that nothing of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyspark
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.wheel]

HOST = "127.0.0.1"
SPARK_HOME = Path(os.path.dirname(pyspark.__file__))
JOB = Path(__file__).with_name("cluster_job.py")
CLUSTER_START_TIMEOUT = 90.0  # seconds for 3 JVMs to start on a busy 2-core machine
SUBMIT_TIMEOUT = 400.0  # seconds for the whole spark-submit run
PACK_TIMEOUT = 300.0  # seconds for venv-pack to pack a ~2.6 GB environment on 2 cores
# The name Spark unpacks the packed environment under, in every executor's working directory.
ENVIRONMENT = "environment"
# .ci/run names the wheel it installed; the py-files recipe ships that same file.
WHEEL = os.environ.get("DISTKERAS_WHEEL", "")
STOP_GRACE = 15.0  # seconds between SIGTERM and SIGKILL at teardown
WORKERS = 2
# The fake GPU addresses each Worker advertises (distinct, so a task's are traceable).
WORKER_GPUS = [["0", "1"], ["2", "3"]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spark_env() -> dict[str, str]:
    """The environment of every Spark process: loopback only, this interpreter everywhere."""
    env = {
        key: value
        for key, value in os.environ.items()
        # A gateway or submit arguments inherited from an embedded Spark in this process
        # would make spark-submit's Python attach to the wrong JVM.
        if not key.startswith(("PYSPARK_GATEWAY", "PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR"))
    }
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        # Makes every Spark service bind to loopback, including the web UIs (which bind to
        # every interface otherwise) and the executors that the Workers launch (they inherit it).
        SPARK_LOCAL_IP=HOST,
        # The driver and the executors run this interpreter, where the package is installed.
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


# ----------------------------------------------------------------------------- processes


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) in session ``sid``, read from /proc.

    A session, unlike a process group, also holds what moved to a group of its own: pyspark's
    worker daemon calls ``setpgid`` for its children, but nothing here calls ``setsid``.
    Without /proc (not Linux) only the group ``sid`` is checked.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(sid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [sid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the command name (which may hold spaces and parentheses):
        # state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in "ZX":
            members.append(int(entry.name))
    return members


def describe(pids: list[int]) -> str:
    """Command lines of ``pids``, for failure messages."""
    lines = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            lines.append(f"{pid}: {cmdline.decode(errors='replace')[:200]}")
        except OSError:
            lines.append(f"{pid}: ?")
    return "\n".join(lines)


def signal_session(sid: int, signum: int) -> None:
    """Send ``signum`` to the group ``sid`` and to every other process of session ``sid``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signum)
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file (empty if there is none yet)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Launched:
    """A process started in a session of its own, with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    @classmethod
    def start(cls, name: str, args: list[str], log: Path, cwd: Path, **env: str) -> Launched:
        log_file = log.open("wb")
        process = subprocess.Popen(  # pyspark's own launcher scripts
            args,
            cwd=cwd,
            env={**spark_env(), **env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and group: pid == sid == pgid
        )
        return cls(name, process, log, log_file)

    def report(self) -> str:
        return f"--- {self.name} ({self.log}), last lines:\n{tail(self.log)}"


def stop_all(launched: list[Launched]) -> str:
    """Stop every session (SIGTERM, then SIGKILL after ``STOP_GRACE``); describe leftovers.

    Returns:
        An empty string if no process of any session is left, else their command lines.
    """
    sids = [item.process.pid for item in launched]
    for sid in sids:
        signal_session(sid, signal.SIGTERM)
    for signum, grace in ((signal.SIGKILL, STOP_GRACE), (None, 10.0)):
        deadline = time.monotonic() + grace
        while any(session_members(sid) for sid in sids) and time.monotonic() < deadline:
            time.sleep(0.2)  # ok: waiting for other processes to exit, bounded
        if signum is not None:
            for sid in sids:
                signal_session(sid, signum)
    for item in launched:
        with contextlib.suppress(subprocess.TimeoutExpired):
            item.process.wait(timeout=10)  # reap our direct child so it is no zombie
        item.log_file.close()
    left = [pid for sid in sids for pid in session_members(sid)]
    return describe(left) if left else ""


# ----------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """A running standalone master with its workers, all on 127.0.0.1."""

    url: str
    webui: int
    work_dirs: list[Path]
    launched: list[Launched] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(item.report() for item in self.launched)

    def state(self) -> dict[str, Any]:
        """The master's state from its web UI's JSON; empty while it does not answer."""
        try:
            url = f"http://{HOST}:{self.webui}/json/"
            with urllib.request.urlopen(url, timeout=3) as response:
                state = json.load(response)
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def wait_until(self, what: str, ready: Callable[[dict[str, Any]], bool]) -> None:
        """Poll the master's state until ``ready`` holds; fail with the logs otherwise."""
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT
        while not ready(state := self.state()):
            dead = [item.name for item in self.launched if item.process.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = (
                    f"{', '.join(dead)} exited" if dead else f"not within {CLUSTER_START_TIMEOUT} s"
                )
                pytest.fail(f"{what}: {why}; master state {state}\n{self.logs()}")
            time.sleep(0.5)  # ok: polling the master's web UI, bounded by the deadline


def alive_workers(state: dict[str, Any]) -> int:
    """How many workers a master state lists as ALIVE."""
    return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


def start_cluster(root: Path, launched: list[Launched]) -> Cluster:
    """Start a master and ``WORKERS`` workers; return once every worker has registered."""
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, webui = free_port(), free_port()
    cluster = Cluster(f"spark://{HOST}:{port}", webui, [], launched)
    master = [spark_class, "org.apache.spark.deploy.master.Master"]
    master += ["--host", HOST, "--port", str(port), "--webui-port", str(webui)]
    # Spark 4's master also opens a REST submission server on the fixed port 6066 by
    # default; nothing here uses it, and a fixed port would collide between parallel runs.
    rest_off = "-Dspark.master.rest.enabled=false"
    launched.append(
        Launched.start("master", master, root / "master.log", root, SPARK_MASTER_OPTS=rest_off)
    )
    # A master ignores workers that register before it has become leader (state ALIVE), and
    # they retry only after 5 to 15 s: start them once it is ALIVE, which is faster overall.
    cluster.wait_until("master not ALIVE", lambda state: state.get("status") == "ALIVE")
    for index in range(WORKERS):
        work_dir = root / f"worker-{index}"
        work_dir.mkdir()
        cluster.work_dirs.append(work_dir)
        worker = [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", HOST]
        # Web UI port 0: any free port (nothing here reads the workers' UIs).
        worker += ["--cores", "1", "--memory", "2g", "--webui-port", "0"]
        worker += ["--work-dir", str(work_dir), cluster.url]
        # Each Worker advertises GPUs that do not exist: Spark only runs the discovery
        # script and hands the addresses out, which is all the GPU binding depends on.
        gpus = WORKER_GPUS[index]
        script = root / f"gpus-{index}.sh"
        script.write_text(f"#!/bin/sh\necho '{json.dumps({'name': 'gpu', 'addresses': gpus})}'\n")
        script.chmod(0o755)
        options = (
            f"-Dspark.worker.resource.gpu.amount={len(gpus)} "
            f"-Dspark.worker.resource.gpu.discoveryScript={script}"
        )
        launched.append(
            Launched.start(
                f"worker-{index}",
                worker,
                root / f"worker-{index}.log",
                root,
                SPARK_WORKER_OPTS=options,
            )
        )
    cluster.wait_until(
        f"{WORKERS} workers not registered", lambda state: alive_workers(state) >= WORKERS
    )
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A standalone master and two 1-core workers; every process is stopped at teardown."""
    launched: list[Launched] = []
    try:
        yield start_cluster(tmp_path_factory.mktemp("cluster"), launched)
    finally:
        leftovers = stop_all(launched)
    assert not leftovers, f"processes left after stopping the cluster:\n{leftovers}"


def run_tool(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=PACK_TIMEOUT, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}"


@dataclass(frozen=True)
class Recipe:
    """How the executors get distkeras-async: the Spark settings and what they must show."""

    conf: dict[str, str]
    check: Callable[[dict[str, Any]], None]


def packed_environment(root: Path) -> Recipe:
    """This interpreter's virtual environment (the installed wheel) packed by venv-pack."""
    archive = root / "environment.tar.gz"
    # A .tar.gz, not a plain .tar: Spark unpacks a .tar with its own Java code, which refuses
    # the environment's bin/python (a link to the interpreter outside the archive), and a
    # .tar.gz with the system's tar. Level 1: the archive only crosses loopback here.
    pack = [sys.executable, "-m", "venv_pack", "--prefix", sys.prefix, "--output", str(archive)]
    run_tool([*pack, "--quiet", "--compress-level", "1"])

    def check(probe: dict[str, Any]) -> None:
        # The Python worker ran the environment unpacked in its executor's directory, and
        # imported the package from it.
        environment = os.path.realpath(Path(probe["cwd"]) / ENVIRONMENT)
        assert os.path.realpath(Path(probe["python"]).parents[1]) == environment, probe
        assert probe["prefix"] == environment, probe
        assert Path(probe["package"]).is_relative_to(environment), probe

    conf = {
        "spark.archives": f"{archive}#{ENVIRONMENT}",
        "spark.pyspark.python": f"./{ENVIRONMENT}/bin/python",
    }
    return Recipe(conf, check)


def wheel_as_py_files(root: Path) -> Recipe:
    """The nodes' own environment holds the dependencies; the wheel travels as a .zip."""
    wheel = Path(WHEEL)
    assert wheel.is_file(), f"DISTKERAS_WHEEL={WHEEL!r}: .ci/run names the wheel it installed"
    # A copy of this environment without distkeras-async plays the nodes' preinstalled
    # dependencies: hard links (no space, no time), then pip removes the package from the
    # copy only (it unlinks the copy's files).
    nodes = root / "dependencies"
    run_tool(["cp", "-al", sys.prefix, str(nodes)])
    python = nodes / "bin" / "python"
    run_tool([str(python), "-m", "pip", "uninstall", "--yes", "--quiet", "distkeras-async"])
    shipped = root / "distkeras_async.zip"  # Spark puts .zip (not .whl) files on sys.path
    shutil.copy(wheel, shipped)

    def check(probe: dict[str, Any]) -> None:
        assert os.path.realpath(probe["prefix"]) == os.path.realpath(nodes), probe
        # Imported from inside the shipped zip, in the executor's directory.
        assert "/distkeras_async.zip/distkeras_async/" in probe["package"], probe

    return Recipe(
        {"spark.submit.pyFiles": str(shipped), "spark.pyspark.python": str(python)}, check
    )


RECIPES = {"archives": packed_environment, "py-files": wheel_as_py_files}


@pytest.fixture(params=sorted(RECIPES))
def recipe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    assert sys.prefix != sys.base_prefix, "the wheel run installs the wheel into a virtualenv"
    return RECIPES[request.param](tmp_path_factory.mktemp(request.param))


# ----------------------------------------------------------------------------- the test


def submit(cluster: Cluster, tmp_path: Path, result: Path, recipe: Recipe) -> Launched:
    """Run ``cluster_job.py`` on the cluster with spark-submit from an empty directory."""
    from distkeras_async.spark import FAST_BARRIER_CONF

    conf = {
        # The driver (and the parameter server, which binds to spark.driver.host) on loopback.
        "spark.driver.host": HOST,
        "spark.driver.bindAddress": HOST,
        # One 1-core executor per worker: 2 task slots, what the barrier stage needs.
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
        "spark.cores.max": str(WORKERS),
        # Wait for both executors before the job starts (the ratio is of spark.cores.max;
        # without it the session may start with 1 slot and the barrier stage is refused).
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
        "spark.dynamicAllocation.enabled": "false",  # barrier stages refuse it
        # One of its Worker's two (fake) GPUs per executor, and per task.
        "spark.executor.resource.gpu.amount": "1",
        "spark.task.resource.gpu.amount": "1",
        "spark.ui.enabled": "false",  # no driver UI port to collide with parallel runs
        # The driver runs this interpreter; the executors' Python follows the recipe.
        "spark.pyspark.driver.python": sys.executable,
        **recipe.conf,
        **FAST_BARRIER_CONF,
    }
    args = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", cluster.url]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    args += [str(JOB), str(result), str(tmp_path / "device-probes")]
    cwd = tmp_path / "submit-cwd"  # nothing is shared with the workers' directories
    cwd.mkdir()
    return Launched.start("spark-submit", args, tmp_path / "submit.log", cwd)


# Over the suite's 300 s: the two start-up waits, the job and both teardowns, each bounded.
@pytest.mark.timeout(2 * CLUSTER_START_TIMEOUT + PACK_TIMEOUT + SUBMIT_TIMEOUT + 120)
def test_training_on_a_standalone_cluster(cluster: Cluster, recipe: Recipe, tmp_path: Path) -> None:
    result_path = tmp_path / "result.json"
    job = submit(cluster, tmp_path, result_path, recipe)
    try:
        try:
            code = job.process.wait(timeout=SUBMIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"spark-submit ran over {SUBMIT_TIMEOUT:.0f} s\n{job.report()}")
    finally:
        leftovers = stop_all([job])
    assert code == 0, f"spark-submit exited with {code}\n{job.report()}\n{cluster.logs()}"
    assert not leftovers, f"processes left after spark-submit:\n{leftovers}"
    result: dict[str, Any] = json.loads(result_path.read_text())
    print(json.dumps(result, indent=2))

    assert result["master"] == cluster.url
    assert result["default_parallelism"] == WORKERS
    check_gpu_binding(result)

    # Both scheduling modes trained to the accuracy every trainer reaches on local[2]
    # (tests/test_trainers.py), with both workers in the history.
    assert set(result["trainers"]) == {"DOWNPOUR", "AveragingTrainer"}
    for name, run in result["trainers"].items():
        assert run["accuracy"] >= 0.90, f"{name}: test accuracy {run['accuracy']:.3f}"
        assert run["workers"] == list(range(WORKERS)), f"{name}: workers {run['workers']}"

    # The executors were launched by the standalone Workers: each Worker's work dir holds
    # <app-id>/<executor-id>/ with the executor's logs (one app per recipe's job) ...
    app_id = result["app_id"]
    executor_dirs = set()
    for work_dir in cluster.work_dirs:
        apps = [path.name for path in work_dir.iterdir()]
        assert app_id in apps, f"{work_dir}: {apps}, expected {app_id!r} among them"
        executors = list((work_dir / app_id).iterdir())
        assert len(executors) == 1, f"{work_dir / app_id}: {executors}"
        assert (executors[0] / "stderr").is_file(), f"no executor log in {executors[0]}"
        executor_dirs.add(str(executors[0].resolve()))
    # ... and Python tasks ran there, one on each Worker's executor (a barrier stage of 2
    # tasks on 2 one-core executors has to use both).
    assert {probe["cwd"] for probe in result["probe"]} == executor_dirs
    # The executors' Python workers got the wheel's package the recipe's way (never the
    # checkout's), in their own working directories, at this version.
    import distkeras_async

    for probe in result["probe"]:
        recipe.check(probe)
        assert Path(probe["package"]).is_relative_to(probe["cwd"]), probe
        assert probe["version"] == distkeras_async.__version__, probe
    checkout = Path(__file__).resolve().parents[1]
    assert not Path(result["driver_package"]).is_relative_to(checkout), result["driver_package"]


def check_gpu_binding(result: dict[str, Any]) -> None:
    """Each worker's backend saw exactly the GPUs its task was given, or none on use_gpu=False.

    Every executor holds one of its Worker's two fake GPUs (``WORKER_GPUS``) and every task
    one GPU. TensorFlow finds none of them (they do not exist), so it trains on the CPU.
    """
    advertised = {address for addresses in WORKER_GPUS for address in addresses}
    downpour = result["trainers"]["DOWNPOUR"]
    assert {p["worker"] for p in downpour["probes"]} == set(range(WORKERS))
    for probe in downpour["probes"]:
        assert len(probe["assigned"]) == 1 and set(probe["assigned"]) <= advertised, probe
        # The backend's environment names exactly the task's address, bound before Keras.
        assert probe["visible"] == probe["assigned"][0], probe
        assert probe["tf_gpus"] == [], probe
        # A GPU task still limits its CPU threads to its task's cores (1 here).
        assert probe["intra_op_threads"] == 1, probe
    assigned = {p["worker"]: p["assigned"][0] for p in downpour["probes"]}
    # The history records where each worker trained, and its task's GPU.
    assert downpour["devices"] == [[w, "cpu:0", assigned[w]] for w in range(WORKERS)]

    # use_gpu=False: Spark gave each task a GPU (the app asks one per task), and the worker
    # hid every GPU from its backend. The barrier stage ran one task per executor, each
    # with its own executor's GPU.
    averaging = result["trainers"]["AveragingTrainer"]
    assert {p["worker"] for p in averaging["probes"]} == set(range(WORKERS))
    for probe in averaging["probes"]:
        assert len(probe["assigned"]) == 1, probe
        assert probe["visible"] == "" and probe["tf_gpus"] == [], probe
    given = [p["assigned"][0] for p in averaging["probes"]]
    assert len(set(given)) == WORKERS, f"two tasks were given the same GPU: {given}"
    assert averaging["devices"] == [[w, "cpu:0", ""] for w in range(WORKERS)]

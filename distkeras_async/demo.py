"""``distkeras-async demo``: train digits on an embedded Spark with every trainer, print a table.

The main job a newcomer runs first: it starts ``local[N]`` Spark bound to 127.0.0.1, loads
scikit-learn's bundled digits, trains an MLP with the chosen trainer(s) and SingleTrainer as
the baseline, and prints trainer, workers, wall time, updates, samples/s and test accuracy,
then the validation accuracy of the center at every epoch. ``--plot`` writes a PNG of the
loss curves per worker and the validation accuracy per epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distkeras_async.errors import DemoError

MIN_JAVA = 17

# Settings that reach >= 0.90 test accuracy on digits with 2 workers (see docs/trainers.md):
# name -> (optimizer (name, learning rate), trainer keywords, recommended epochs).
SETTINGS: dict[str, tuple[tuple[str, float], dict[str, Any], int]] = {
    "SingleTrainer": (("adam", 0.001), {}, 8),
    "DOWNPOUR": (("adam", 0.001), {"batch_size": 32, "communication_window": 5}, 10),
    "ADAG": (("adam", 0.01), {"batch_size": 32, "communication_window": 4}, 10),
    "DynSGD": (("adam", 0.001), {"batch_size": 32, "communication_window": 5}, 10),
    "AsynchronousEASGD": (
        ("adam", 0.001),
        {"batch_size": 32, "communication_window": 5, "rho": 5.0, "learning_rate": 0.1},
        20,
    ),
    "AsynchronousEAMSGD": (
        ("sgd", 0.05),
        {
            "batch_size": 32,
            "communication_window": 5,
            "rho": 5.0,
            "learning_rate": 0.1,
            "momentum": 0.9,
        },
        15,
    ),
    "EASGD": (
        ("adam", 0.001),
        {"batch_size": 32, "communication_window": 5, "rho": 5.0, "learning_rate": 0.1},
        20,
    ),
    "AveragingTrainer": (("adam", 0.001), {"batch_size": 32, "communication_window": 10}, 15),
}

TRAINER_NAMES = list(SETTINGS)


def make_trainer(
    name: str, model: Any, workers: int, epochs: int | None = None, **extra: Any
) -> Any:
    """A trainer with the demo's settings for digits.

    Synchronous EASGD moves the center by ``workers * learning_rate * rho`` per round, which
    must stay <= 1, so its learning rate shrinks with the number of workers.
    """
    import keras

    from distkeras_async import trainers

    if name not in SETTINGS:
        raise DemoError(f"unknown trainer {name!r}; choose from {', '.join(TRAINER_NAMES)}")
    (optimizer_name, lr), keywords, recommended = SETTINGS[name]
    optimizer = keras.optimizers.get(
        {"class_name": optimizer_name, "config": {"learning_rate": lr}}
    )
    keywords = dict(keywords)
    if name == "EASGD":
        keywords["learning_rate"] = min(
            keywords["learning_rate"], 0.9 / (keywords["rho"] * workers)
        )
    cls = getattr(trainers, name)
    loss = "categorical_crossentropy"
    extra.setdefault("master_port", 0)
    if name == "SingleTrainer":
        return cls(model, optimizer, loss, num_epoch=epochs or recommended, **keywords, **extra)
    return cls(
        model,
        optimizer,
        loss,
        num_workers=workers,
        num_epoch=epochs or recommended,
        **keywords,
        **extra,
    )


def java_version(java: str) -> int:
    """The major version of a ``java`` executable (8 for "1.8.0_x")."""
    try:
        done = subprocess.run(  # noqa: S603 - runs the user's own java to read its version
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoError(f"could not run {java} -version ({exc}); install Java {MIN_JAVA}+") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not match:
        raise DemoError(f"could not read the Java version from {java}; install Java {MIN_JAVA}+")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> None:
    """Fail with a one-line explanation when Java is missing or older than Spark needs."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise DemoError(
            f"Java was not found: Spark needs Java {MIN_JAVA} or newer. Install it (for example "
            "`apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
        )
    major = java_version(java)
    if major < MIN_JAVA:
        raise DemoError(
            f"Java {major} at {java} is too old: Spark 4 needs Java {MIN_JAVA} or newer. "
            "Install a newer JDK or point JAVA_HOME at one."
        )


def start_spark(cores: int) -> Any:
    """An embedded ``local[cores]`` Spark session, bound to 127.0.0.1 only."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # TensorFlow's start-up notices, printed by the driver and by every Spark Python worker,
    # would bury the table: INFO/WARNING logs off, and the oneDNN notice that only turning
    # oneDNN off silences (the demo's small dense layers run at the same speed without it).
    # A value the user set wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from pyspark.sql import SparkSession

    from distkeras_async.spark.jobs import FAST_BARRIER_CONF

    builder = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("distkeras-async demo")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in FAST_BARRIER_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


@dataclass
class Result:
    """One row of the demo's table."""

    trainer: str
    workers: int
    seconds: float
    updates: int
    samples_per_s: float
    accuracy: float
    history: list[dict[str, Any]]
    val_accuracy: list[float]


def run_one(name: str, workers: int, epochs: int | None, data: Any, **extra: Any) -> Result:
    """Train one trainer on digits and measure it."""
    import numpy as np

    from distkeras_async.datasets import digits_mlp

    trainer = make_trainer(name, digits_mlp(), workers, epochs, **extra)
    # Validation on the held-out digits at every epoch: the center, as fit would report it.
    validation = (data.x_test, np.eye(10, dtype=np.float32)[data.y_test])
    model = trainer.train(data.train, validation_data=validation)
    history = trainer.get_history()
    stats = trainer.get_parameter_server_stats()
    seconds = trainer.get_training_time()
    # Throughput while the workers trained (from their step timestamps), not counting the
    # Spark job's start-up, which wall time includes.
    stamps = [h["timestamp"] for h in history]
    busy = max(stamps) - min(stamps) if len(stamps) > 1 else 0.0
    return Result(
        trainer=name,
        workers=1 if name == "SingleTrainer" else workers,
        seconds=seconds,
        updates=stats.version if stats else 0,
        samples_per_s=(len(history) - 1) * trainer.batch_size / busy if busy else 0.0,
        accuracy=data.accuracy(model),
        history=history,
        val_accuracy=list(trainer.get_keras_history().history.get("val_accuracy", [])),
    )


def format_table(results: Sequence[Result]) -> str:
    """The results as an aligned text table."""
    head = (
        f"{'trainer':<20} {'workers':>7} {'wall s':>7} {'updates':>8} {'samples/s':>10} "
        f"{'accuracy':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.trainer:<20} {r.workers:>7} {r.seconds:>7.1f} {r.updates:>8} "
            f"{r.samples_per_s:>10,.0f} {r.accuracy:>9.3f}"
        )
    return "\n".join(lines)


def format_epochs(results: Sequence[Result]) -> str:
    """Validation accuracy of the center at the end of every epoch, one row per trainer."""
    epochs = max((len(r.val_accuracy) for r in results), default=0)
    head = f"{'val accuracy by epoch':<22}" + "".join(f"{e:>7}" for e in range(1, epochs + 1))
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.trainer:<22}" + "".join(f"{a:>7.3f}" for a in r.val_accuracy))
    return "\n".join(lines)


def plot(results: Sequence[Result], path: str) -> None:
    """Write a PNG: loss per worker over local steps, and validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.get_cmap("tab10")
    for i, r in enumerate(results):
        workers = sorted({h["worker"] for h in r.history})
        for w in workers:
            steps = [h for h in r.history if h["worker"] == w]
            left.plot(
                [h["iteration"] for h in steps],
                [h["loss"] for h in steps],
                color=colors(i % 10),
                alpha=0.85,
                linewidth=1.2,
                linestyle=("-", "--", ":", "-.")[w % 4],
                label=r.trainer if w == workers[0] else None,
            )
    left.set(
        xlabel="local step",
        ylabel="training loss (fit: running epoch mean)",
        yscale="log",
        title="Loss per worker (solid: worker 0, dashed: worker 1, dotted: worker 2)",
    )
    left.legend(fontsize="small", ncol=2, loc="upper right")
    for i, r in enumerate(results):
        right.plot(
            range(1, len(r.val_accuracy) + 1),
            r.val_accuracy,
            marker="o",
            color=colors(i % 10),
            label=f"{r.trainer} ({r.workers} w): {r.accuracy:.3f}",
        )
    right.set(
        ylim=(0, 1.05),
        xlabel="epoch",
        ylabel="validation accuracy of the center",
        title="Accuracy on held-out digits, per epoch",
    )
    right.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    trainer_names: Sequence[str],
    workers: int,
    epochs: int | None,
    port: int = 0,
    progress: bool | None = None,
    plot_path: str | None = None,
    echo: Callable[[str], None] = print,
    backend: str | None = None,
) -> list[Result]:
    """Run the demo: SingleTrainer first as the baseline, then each requested trainer.

    ``backend`` is the workers' Keras backend (default: this process' ``KERAS_BACKEND``).
    """
    from distkeras_async.datasets import digits
    from distkeras_async.spark.jobs import warm_up
    from distkeras_async.worker.backend import check_backend, current_backend

    backend = check_backend(backend or current_backend())
    check_java()
    if port:
        _check_port(port)
    names = ["SingleTrainer", *[n for n in trainer_names if n != "SingleTrainer"]]
    spark = start_spark(max(2, workers))
    try:
        data = digits(spark)
        echo(f"starting Spark's Python workers (Keras on {backend}) ...")
        warm_up(data.train, max(2, workers), backend=backend)
        results = []
        for name in names:
            echo(f"training {name} ({1 if name == 'SingleTrainer' else workers} worker(s)) ...")
            results.append(
                run_one(
                    name,
                    workers,
                    epochs,
                    data,
                    master_port=port,
                    progress=progress,
                    backend=backend,
                )
            )
        echo(format_table(results))
        echo("")
        echo(format_epochs(results))
        if plot_path:
            plot(results, plot_path)
            echo(f"plot written to {plot_path}")
        return results
    finally:
        spark.stop()


def _check_port(port: int) -> None:
    import socket

    try:
        with socket.create_server(("127.0.0.1", port)):
            pass
    except OSError:
        raise DemoError(
            f"port {port} on 127.0.0.1 is already in use: pass another --port, or --port 0 "
            "to let the system choose"
        ) from None

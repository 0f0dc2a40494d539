"""Spark glue: DataFrame -> partitions -> workers -> history rows back on the driver.

Only ``spark/``, ``ml/`` and ``trainers/`` import pyspark (an import-linter contract holds
it). In the style of Spark's own TorchDistributor, the per-task function captures nothing
but plain values (the :class:`WorkerPlan`), imports what runs on executors inside itself,
and returns its results as Arrow rows. Synchronous
algorithms run as a barrier stage, so every worker is scheduled at once or the job fails;
the slot count is checked first, so a cluster that is too small fails in seconds rather
than after Spark's default ten minutes of retries.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812 - Spark's own convention
from pyspark.sql import types as T  # noqa: N812

from distkeras_async.errors import ColumnError, InputDataError, WorkerFailedError
from distkeras_async.spark.resources import check_barrier_slots, resolve_use_gpu
from distkeras_async.worker.plan import WorkerPlan

logger = logging.getLogger(__name__)

HISTORY_SCHEMA = (
    "worker int, attempt int, iteration long, timestamp double, metrics map<string,double>, "
    "device string, gpus string"
)
# The environment variable that keeps CPU and GPU jobs in separate Spark Python workers.
DEVICE_ENV = "DISTKERAS_ASYNC_DEVICE"

# Spark settings that make a barrier stage with too few slots fail fast instead of
# retrying for ten minutes; they must be set before the SparkContext starts.
FAST_BARRIER_CONF = {
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "3",
}


def driver_host(spark: SparkSession) -> str:
    """The address executors use to reach the driver (``spark.driver.host``)."""
    return str(spark.conf.get("spark.driver.host", "127.0.0.1"))


def float_column(df: DataFrame, name: str, *, for_workers: bool = False) -> Column:
    """Column ``name`` as numbers, arrays of numbers, or vectors.

    Args:
        df: the DataFrame.
        name: the column.
        for_workers: the column goes to workers (or predicting tasks), which decode Spark ML
            vectors themselves, block by block (a sparse vector stays sparse until then);
            otherwise vectors become ``array<float>`` here. A binary column is passed as it
            is, for a worker class's ``decode_column``.

    Raises:
        KeyError: for a column that is not in ``df``.
        TypeError: for a column of another type (strings, maps, ...).
    """
    if name not in df.columns:
        raise KeyError(f"column {name!r} is not in the DataFrame (have {df.columns})")
    kind = df.schema[name].dataType
    if isinstance(kind, VectorUDT):
        if for_workers:
            return F.col(name).alias(name)
        # vector_to_array fails inside the JVM on a null vector, naming nothing; a null array
        # reaches the worker, which names the column and the row.
        converted = vector_to_array(F.col(name), "float32")
        return F.when(F.col(name).isNull(), F.lit(None)).otherwise(converted).alias(name)
    if isinstance(kind, T.ArrayType | T.BinaryType):
        return F.col(name).alias(name)
    if isinstance(kind, T.NumericType | T.BooleanType):
        return F.col(name).cast("float").alias(name)
    raise TypeError(
        f"column {name!r} has type {kind.simpleString()}; expected a vector, an array or a "
        "number (or bytes, which a worker class's decode_column decodes)"
    )


# Spark job groups of the training run's own jobs: the input checks, and the training job.
CHECK_GROUP = "distkeras-async-checks"
TRAINING_GROUP = "distkeras-async-training"


@contextlib.contextmanager
def job_group(spark: SparkSession, group: str, description: str) -> Iterator[None]:
    """Run the jobs started inside under a Spark job group, then restore the previous one.

    Spark's UI and status tracker show a run's jobs by their group.
    """
    sc = spark.sparkContext
    previous = sc.getLocalProperty("spark.jobGroup.id")
    previous_description = sc.getLocalProperty("spark.job.description")
    sc.setJobGroup(group, description)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", previous)  # type: ignore[arg-type]
        sc.setLocalProperty("spark.job.description", previous_description)  # type: ignore[arg-type]


def first_row(df: DataFrame, columns: Sequence[str]) -> dict[str, Any] | None:
    """The first row of ``columns`` (vectors as arrays), or None for an empty DataFrame.

    One small Spark job under :data:`CHECK_GROUP`; no pass over the data.
    """
    rows = first_rows(df, columns, 1)
    return rows[0] if rows else None


def first_rows(df: DataFrame, columns: Sequence[str], count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of ``columns`` (vectors as arrays), in one small Spark job."""
    with job_group(df.sparkSession, CHECK_GROUP, "distkeras-async: checking the input"):
        rows = numeric_columns(df, columns).head(count)
    return [row.asDict() for row in rows]


def numeric_columns(
    df: DataFrame, columns: Sequence[str], *, for_workers: bool = False
) -> DataFrame:
    """``columns`` (each once) through :func:`float_column`."""
    return df.select(
        *[float_column(df, c, for_workers=for_workers) for c in dict.fromkeys(columns)]
    )


def prepare(
    df: DataFrame,
    columns: Sequence[str],
    num_partitions: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> DataFrame:
    """Select ``columns`` as numeric/array columns and spread the rows over the partitions.

    Vector columns travel as Spark's vector struct (sparse ones stay sparse) and workers
    densify them block by block; ``shuffle`` also randomises which rows go to which worker.
    """
    selected = numeric_columns(df, columns, for_workers=True)
    if shuffle:
        selected = selected.orderBy(F.rand(seed))
    return selected.repartition(num_partitions)


@contextlib.contextmanager
def executor_environment(spark: SparkSession, backend: str, use_gpu: bool) -> Iterator[None]:
    """Give the Python functions defined inside this block's jobs their backend and device.

    PySpark passes ``SparkContext.environment`` to the Python workers of each function it
    ships, and Spark keeps one pool of Python workers per environment: a job on JAX gets its
    own workers, which import Keras on JAX, next to the TensorFlow workers of earlier jobs
    (a Python process cannot switch its Keras backend once Keras is imported). The same
    holds for devices: CPU jobs and GPU jobs never share a Python worker, which stays bound
    to the devices of its first task (``worker/devices.py``).
    """
    environment = spark.sparkContext.environment
    wanted = {"KERAS_BACKEND": backend, DEVICE_ENV: "gpu" if use_gpu else "cpu"}
    previous = {key: environment.get(key) for key in wanted}
    environment.update(wanted)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value


def prepare_task(backend: str, use_gpu: bool) -> str:
    """On an executor, before Keras is imported: select the backend and bind the task's GPUs.

    Returns:
        The task's GPU addresses, comma-separated (``""``: it runs on the CPU).
    """
    from pyspark import TaskContext

    from distkeras_async.worker.backend import check_backend, select_backend
    from distkeras_async.worker.devices import bind_devices, task_devices

    context = TaskContext.get()
    gpus = None if context is None else context.resources().get("gpu")
    addresses = task_devices([] if gpus is None else list(gpus.addresses), use_gpu)
    bound = bind_devices(addresses)
    select_backend(backend)
    check_backend(backend)
    return bound


def warm_up(
    df: DataFrame, workers: int, backend: str = "tensorflow", use_gpu: bool | None = None
) -> None:
    """Start ``workers`` Spark Python workers and import Keras in each, all at once.

    A fresh Python worker spends 4-8 s importing TensorFlow; doing it before training keeps
    that out of training times (Spark reuses the workers for the next jobs of the same
    backend and ``use_gpu``, whose Python workers are bound to their tasks' devices).
    """
    spark = df.sparkSession
    gpu = resolve_use_gpu(spark, use_gpu)

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        prepare_task(backend, gpu)
        import keras  # noqa: F401 - the import is the point

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict({"ok": pa.array([1], pa.int32())})

    check_barrier_slots(spark, workers, use_gpu=gpu)
    with executor_environment(spark, backend, gpu):
        warmed = df.repartition(workers).mapInArrow(task, "ok int", barrier=True)
    warmed.collect()


def _history_batch(records: Sequence[Any], attempt: int, device: str, gpus: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "worker": pa.array([r.worker for r in records], pa.int32()),
            "attempt": pa.array([attempt] * len(records), pa.int32()),
            "iteration": pa.array([r.iteration for r in records], pa.int64()),
            "timestamp": pa.array([r.timestamp for r in records], pa.float64()),
            "metrics": pa.array(
                [list(r.metrics.items()) for r in records], pa.map_(pa.string(), pa.float64())
            ),
            "device": pa.array([device] * len(records), pa.string()),
            "gpus": pa.array([gpus] * len(records), pa.string()),
        }
    )


def run_workers(
    spark: SparkSession, df: DataFrame, plan: WorkerPlan, num_workers: int, *, barrier: bool
) -> list[dict[str, Any]]:
    """Run one worker per partition of ``df``; return every worker's history rows.

    Raises:
        InsufficientSlotsError: for a barrier stage larger than the cluster.
        WorkerFailedError: if a worker raised (its message and traceback included).
    """
    if barrier:
        check_barrier_slots(spark, num_workers, use_gpu=plan.use_gpu)
    columns = plan.columns

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # Runs on an executor: import there, use only the plain values captured above.
        from pyspark import TaskContext

        gpus = prepare_task(plan.backend, plan.use_gpu)  # before anything imports Keras
        from distkeras_async.worker.keras_worker import new_worker
        from distkeras_async.worker.partition import spool

        context = TaskContext.get()
        assert context is not None
        worker, attempt = context.partitionId(), context.attemptNumber()
        trainer = new_worker(plan, worker, attempt, task_cores=context.cpus())
        try:
            with spool(batches, columns, limit=plan.data.in_memory_limit) as partition:
                history = trainer.train(partition)
        except ColumnError as exc:
            # from None: the ColumnError's own traceback says nothing more than this message.
            raise InputDataError(
                f"worker {worker} (attempt {attempt}), in its partition: {exc}"
            ) from None
        yield _history_batch(history, attempt, trainer.device, gpus)

    try:
        with job_group(spark, TRAINING_GROUP, "distkeras-async: training"):
            with executor_environment(spark, plan.backend, plan.use_gpu):
                training = df.mapInArrow(task, HISTORY_SCHEMA, barrier=barrier)
            rows = training.collect()
    except Exception as exc:
        if type(exc).__module__.startswith(("pyspark", "py4j")):
            raise WorkerFailedError(describe_worker_failure(str(exc))) from exc
        raise
    return [row.asDict() for row in rows]


# Spark names a failed task "<partition>.<attempt>" of its stage; a worker is its partition.
_LOST_TASK = re.compile(r"Lost task (\d+)\.(\d+) in stage")
# The last line of a Python traceback: "package.module.SomeError: what happened".
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$")


def describe_worker_failure(text: str) -> str:
    """A failed training job's error, for people: the cause first, then the worker's traceback.

    The first line names the worker and says what went wrong (for bad data: the column, the
    row and the fix, as the worker's own error says); the Python traceback follows, and the
    JVM's stack, which says nothing about the worker's error, is left out.

    Args:
        text: the message of the exception that ``collect()`` raised on the driver.
    """
    lost = _LOST_TASK.search(text)
    who = "a worker" if lost is None else f"worker {lost[1]} (attempt {lost[2]})"
    start = text.find("Traceback (most recent call last)")
    if start < 0:
        # No Python traceback: the worker's process died (killed, out of memory, crashed).
        rest = text[lost.end() :] if lost is not None else text.strip()
        reason = (rest.splitlines() or ["no reason given"])[0].split("): ", 1)[-1].strip()
        named = _EXCEPTION_LINE.match(reason)
        if named is not None:  # "org.apache.spark.SparkException: Python worker exited ..."
            reason = f"{named[1].rsplit('.', 1)[-1]}: {named[2]}"
        return f"{who} died: {reason}\n\n{_without_jvm_stack(text)}"
    traceback = _without_jvm_stack(text[start:])
    cause = next(
        (
            match
            for line in reversed(traceback.splitlines())
            if (match := _EXCEPTION_LINE.match(line.strip())) is not None
            and not line.startswith(" ")
        ),
        None,
    )
    if cause is None:
        return f"{who} failed:\n{traceback}"
    name, message = cause[1].rsplit(".", 1)[-1], cause[2]
    # Our own errors name the worker already; others get it in front.
    headline = message if message.startswith("worker ") else f"{who} failed: {message}"
    return f"{name}: {headline}\n\nthe worker's traceback:\n{traceback}"


def _without_jvm_stack(text: str) -> str:
    for jvm in ("\n\tat ", " SQLSTATE:"):
        end = text.find(jvm)
        if end > 0:
            text = text[:end]
    return text.rstrip()

"""What the cluster can run at once: task slots by cores and by GPUs, checked before a job.

Spark assigns GPUs to tasks (``spark.task.resource.gpu.amount`` of the
``spark.executor.resource.gpu.amount`` each executor has), but two situations only show once
a job runs: in local mode a task that asks for a GPU is never scheduled (the job waits
forever), and a barrier stage with more tasks than GPU slots waits for slots that never come.
A worker also binds its process to its GPUs for good (``worker/devices.py``), so an executor
whose tasks can receive different GPUs must not reuse Python workers. Each of these fails
here, on the driver, with the numbers, before any job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from pyspark.sql import SparkSession

from distkeras_async.errors import DeviceError, InsufficientSlotsError

TASK_GPUS = "spark.task.resource.gpu.amount"
EXECUTOR_GPUS = "spark.executor.resource.gpu.amount"
REUSE = "spark.python.worker.reuse"


@dataclass(frozen=True)
class GpuConfig:
    """The application's GPU settings.

    Attributes:
        task: GPUs per task (a fraction shares one GPU between tasks; 0: tasks get none).
        executor: GPUs per executor.
    """

    task: Fraction
    executor: Fraction

    @property
    def slots_per_executor(self) -> int:
        """How many tasks one executor's GPUs can hold at once."""
        return math.floor(self.executor / self.task) if self.task else 0

    @property
    def varies_per_task(self) -> bool:
        """Whether tasks of one executor can be given different GPU addresses."""
        return bool(self.task) and self.executor > max(1, math.ceil(self.task))


def gpu_config(spark: SparkSession) -> GpuConfig:
    """The application's GPU amounts (0 where not set).

    Raises:
        DeviceError: for an amount that is not a number.
    """
    conf = spark.sparkContext.getConf()

    def amount(key: str) -> Fraction:
        text = conf.get(key, "0") or "0"
        try:
            return Fraction(text)
        except ValueError:
            raise DeviceError(f"{key} must be a number, got {text!r}") from None

    return GpuConfig(task=amount(TASK_GPUS), executor=amount(EXECUTOR_GPUS))


def resolve_use_gpu(spark: SparkSession, use_gpu: bool | None) -> bool:
    """Whether a run's workers use GPUs: ``use_gpu``, or (None) whether tasks get GPUs.

    Raises:
        DeviceError: in local mode with GPU tasks configured (Spark would never schedule
            them); for ``use_gpu=True`` without GPU tasks; for executors whose tasks can be
            given different GPUs while Python workers are reused.
    """
    config = gpu_config(spark)
    master = str(spark.sparkContext.master)
    if config.task and (master == "local" or master.startswith("local[")):
        raise DeviceError(
            f"{TASK_GPUS}={config.task} in local mode ({master!r}): Spark's local mode gives "
            "tasks no GPUs, so such a job would wait forever; unset it and pass use_gpu=False, "
            "or run a cluster (standalone, YARN, Kubernetes) whose executors have GPUs"
        )
    if use_gpu is False:
        return False
    if not config.task:
        if use_gpu:
            raise DeviceError(
                f"use_gpu=True, but {TASK_GPUS} is not set, so Spark gives tasks no GPUs: set "
                f"it (e.g. 1, or 0.5 for two tasks per GPU) with {EXECUTOR_GPUS} and a GPU "
                "discovery script (docs/cluster.md)"
            )
        return False
    reuse = spark.sparkContext.getConf().get(REUSE, "true").strip().lower() != "false"
    if config.varies_per_task and reuse:
        raise DeviceError(
            f"each executor has {config.executor} GPUs and each task gets {config.task}, so "
            "tasks of one executor get different GPUs, but a Python worker binds its Keras "
            f"backend to one set for good and Spark reuses Python workers: set {REUSE}=false, "
            f"or give each executor one GPU ({EXECUTOR_GPUS}=1)"
        )
    return True


def executor_count(spark: SparkSession) -> int:
    """Executors registered now (the driver's block manager is not one; local mode: 1)."""
    sc = spark.sparkContext
    registered = int(sc._jsc.sc().getExecutorMemoryStatus().size())
    return max(1, registered - 1)


def available_slots(spark: SparkSession, *, use_gpu: bool = False) -> int:
    """How many tasks the cluster can run at once (for ``local[N]``: N).

    With ``use_gpu``, also bounded by the executors' GPU slots.
    """
    sc = spark.sparkContext
    cpus_per_task = int(sc.getConf().get("spark.task.cpus", "1"))
    slots = max(1, int(sc.defaultParallelism) // max(1, cpus_per_task))
    if use_gpu:
        slots = min(slots, executor_count(spark) * gpu_config(spark).slots_per_executor)
    return slots


def check_barrier_slots(spark: SparkSession, num_workers: int, *, use_gpu: bool = False) -> None:
    """Fail at once if a barrier stage of ``num_workers`` tasks cannot be scheduled.

    Raises:
        InsufficientSlotsError: naming the slots available (by cores and by GPUs) and the
            workers asked for.
    """
    slots = available_slots(spark, use_gpu=use_gpu)
    if num_workers <= slots:
        return
    detail = ""
    if use_gpu:
        config = gpu_config(spark)
        detail = (
            f"; {available_slots(spark)} by cores, {executor_count(spark)} executor(s) x "
            f"{config.slots_per_executor} by GPUs ({EXECUTOR_GPUS}={config.executor}, "
            f"{TASK_GPUS}={config.task})"
        )
    raise InsufficientSlotsError(
        f"a synchronous algorithm runs all {num_workers} workers at once, but the cluster "
        f"has {slots} task slot(s) (master {spark.sparkContext.master!r}{detail}); lower "
        f"num_workers to {slots} or add executors/cores{'/GPUs' if use_gpu else ''}"
    )

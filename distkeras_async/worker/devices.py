"""The accelerators of a Spark task: bound before the Keras backend is imported.

Spark gives a task GPU addresses (``TaskContext.resources()["gpu"]``) but leaves it to the
task to use exactly those: a backend imported without a restriction sees, and TensorFlow and
JAX reserve memory on, every GPU of the node, so two tasks on one node collide. A task
therefore binds its process to its addresses through ``CUDA_VISIBLE_DEVICES`` before the
first ``import keras`` (:func:`bind_devices`), the variable that TensorFlow, JAX and PyTorch
all honour, and a task that does not use GPUs hides them all (an empty value).

The CUDA runtime reads the variable once per process. Spark reuses a Python worker for later
tasks of the same environment; a later task given other addresses than the ones the process
was bound to cannot be served and fails with the fix (:class:`DeviceError`). The driver
refuses configurations where that can happen before any job runs
(``distkeras_async.spark.resources``), and keeps CPU and GPU jobs in separate Python workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

from distkeras_async.errors import DeviceError

VISIBLE = "CUDA_VISIBLE_DEVICES"
# What this process was bound to (kept in the environment, like the binding itself, so a
# reused Spark Python worker remembers it across tasks).
BOUND = "DISTKERAS_ASYNC_BOUND_GPUS"


def bind_devices(
    addresses: Sequence[str],
    *,
    environ: MutableMapping[str, str] | None = None,
    keras_loaded: bool | None = None,
) -> str:
    """Restrict this process' backend to the GPUs ``addresses`` (none: the CPU only).

    Sets ``CUDA_VISIBLE_DEVICES`` to the addresses, and, for a GPU task, asks TensorFlow to
    grow its GPU memory and JAX not to preallocate 75 % of it, so tasks that share one GPU
    (a fractional ``spark.task.resource.gpu.amount``) fit side by side. A CPU task also gets
    ``JAX_PLATFORMS=cpu`` unless set, so JAX does not look for a GPU it may not use. Settings
    the user made in the executor's environment are kept.

    Args:
        addresses: the GPU addresses Spark assigned to the task, in Spark's (the discovery
            script's) numbering; empty for a task that runs on the CPU.
        environ: the environment to change (default: ``os.environ``).
        keras_loaded: whether Keras is already imported here (default: look it up).

    Returns:
        The bound value of ``CUDA_VISIBLE_DEVICES`` (``""`` for the CPU).

    Raises:
        DeviceError: if this process already runs Keras with other devices visible (a
            Spark Python worker reused from a task that was given other addresses).
    """
    env = os.environ if environ is None else environ
    wanted = ",".join(str(a).strip() for a in addresses)
    loaded = "keras" in sys.modules if keras_loaded is None else keras_loaded
    if loaded:
        # The backend has read the variable already: the binding can only be confirmed.
        bound = env.get(BOUND, env.get(VISIBLE))
        # A CPU task in a process that imported Keras unbound (not through this module)
        # goes on: its history records the device it really used (model_device).
        if bound != wanted and (wanted or BOUND in env):
            raise DeviceError(
                f"this Spark Python worker already runs Keras with "
                f"{_describe(bound)} visible and cannot switch to {_describe(wanted)}, the "
                "task's assignment: give each executor one GPU (spark.executor.resource.gpu."
                "amount=1, tasks may share it with a fractional spark.task.resource.gpu.amount) "
                "or set spark.python.worker.reuse=false"
            )
        return wanted
    env[VISIBLE] = wanted
    env[BOUND] = wanted
    if wanted:
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    else:
        env.setdefault("JAX_PLATFORMS", "cpu")
    return wanted


def task_devices(addresses: Sequence[str], use_gpu: bool) -> list[str]:
    """The addresses a task binds: its assigned GPUs when the run uses GPUs, else none.

    Raises:
        DeviceError: for a GPU run whose task was given no GPU.
    """
    if not use_gpu:
        return []
    if not addresses:
        raise DeviceError(
            "the run uses GPUs but Spark gave this task none: set "
            "spark.task.resource.gpu.amount (and spark.executor.resource.gpu.amount)"
        )
    return [str(a) for a in addresses]


def _describe(visible: str | None) -> str:
    if visible is None:
        return "every GPU"
    return f"GPUs {visible}" if visible else "no GPU"


def device_of(value: Any) -> str:
    """The device a backend tensor lives on, lower-case: ``cpu:0``, ``gpu:0``, ``cuda:0``.

    TensorFlow names it ``/job:.../device:GPU:0``, JAX ``cuda:0`` and PyTorch ``cuda:0``;
    the numbering is the process' own, over its visible GPUs.
    """
    device = getattr(value, "device", None)
    if callable(device):  # older JAX arrays: a method
        device = device()
    text = str(device if device is not None else "cpu")
    if "device:" in text:  # TensorFlow
        text = text.rsplit("device:", 1)[1]
    return text.lower()


def model_device(model: Any) -> str:
    """The device ``model``'s first weight lives on (``cpu`` for a model without weights)."""
    weights = getattr(model, "weights", None) or []
    return device_of(weights[0].value) if weights else "cpu"

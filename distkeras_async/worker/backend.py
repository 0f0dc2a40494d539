"""The Keras backend of a worker: chosen before Keras is imported, threads, fast variables.

Keras 3 reads ``KERAS_BACKEND`` once, when it is first imported, and a process cannot switch
afterwards. A Spark task therefore sets the plan's backend before its first ``import keras``
(:func:`select_backend`); a reused Spark Python worker that already runs Keras on another
backend is refused with the fix, rather than silently training on the wrong one.

Weights move between the flat float32 center and the model by direct variable assignment on
every backend (:func:`read_variables`, :func:`assign_variables`): ``model.set_weights`` goes
through per-tensor conversions that cost most of an exchange for a small model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras_async.errors import BackendError

logger = logging.getLogger(__name__)

# The Keras backends and the package each needs.
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def check_backend(backend: str) -> str:
    """``backend`` if Keras knows it and its package is installed here.

    Raises:
        BackendError: naming the backends, or the extra to install.
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        extra = "" if backend == "tensorflow" else f" (pip install 'distkeras-async[{backend}]')"
        raise BackendError(
            f"the Keras backend {backend!r} needs the {BACKENDS[backend]!r} package, which is "
            f"not installed{extra}"
        )
    return backend


def current_backend() -> str:
    """The backend Keras runs on in this process, or would run on when first imported."""
    keras = sys.modules.get("keras")
    if keras is not None:
        return str(keras.backend.backend())
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def select_backend(backend: str) -> None:
    """Make ``backend`` the backend of this process' Keras, before Keras is imported.

    Raises:
        BackendError: if Keras already runs here on another backend (a reused Spark Python
            worker of an earlier job): the message says how to give executors the backend.
    """
    running = sys.modules.get("keras")
    if running is None:
        os.environ["KERAS_BACKEND"] = backend
        return
    actual = str(running.backend.backend())
    if actual != backend:
        raise BackendError(
            f"this Spark Python worker already runs Keras on {actual!r} and cannot switch to "
            f"{backend!r}: set KERAS_BACKEND={backend} (and spark.executorEnv.KERAS_BACKEND="
            f"{backend}) before the SparkSession starts, or run backends in separate Spark "
            "applications"
        )


def limit_threads(threads: int | None) -> None:
    """Limit the backend's CPU threads to ``threads`` so co-located workers do not fight.

    TensorFlow and JAX accept this only before their runtime starts (in a Spark Python worker
    that already ran a task, the first task's limit stays); PyTorch at any time.
    """
    if not threads:
        return
    backend = current_backend()
    if backend == "tensorflow":
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(min(threads, 2)))
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except (ImportError, RuntimeError) as exc:  # runtime already initialised
            logger.debug("could not set TensorFlow threads: %s", exc)
    elif backend == "jax":
        if "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
            os.environ["XLA_FLAGS"] = (
                f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                f"intra_op_parallelism_threads={threads}"
            )
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)


def read_variables(model: Any, variables: Sequence[Any]) -> list[np.ndarray]:
    """The current value of every variable as numpy, also in the middle of ``fit``.

    On JAX, ``fit`` keeps the training state apart from the variables during an epoch; it
    is written back first (``jax_state_sync``), which also makes ``fit`` read the variables
    again before its next step, so an assignment after this one is not lost.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()  # a no-op outside fit, or when nothing changed since the last sync
    return [_to_numpy(v.value) for v in variables]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch
        return np.asarray(value.detach().cpu().numpy())
    if hasattr(value, "numpy"):  # TensorFlow
        return np.asarray(value.numpy())
    return np.asarray(value)  # JAX


def assign_variables(model: Any, variables: Sequence[Any], values: Sequence[np.ndarray]) -> None:
    """Assign ``values`` to the variables (each cast to the variable's dtype)."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        # Written back first and marked synced, so neither fit's next step nor its epoch
        # end puts the old state over the new values: fit reads the variables again.
        sync()
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)

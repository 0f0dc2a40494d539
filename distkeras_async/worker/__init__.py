"""The worker side: the blocking client, the exchange loop and the Keras worker.

Keras is imported lazily (inside functions), so ``import distkeras_async.worker`` is cheap.
"""

from distkeras_async.worker.client import ParameterServerClient
from distkeras_async.worker.exchange import (
    HookList,
    LocalModel,
    SessionHooks,
    StepRecord,
    WorkerSession,
    run_worker,
)
from distkeras_async.worker.keras_worker import KerasWorker
from distkeras_async.worker.plan import WorkerPlan

__all__ = [
    "HookList",
    "KerasWorker",
    "LocalModel",
    "ParameterServerClient",
    "SessionHooks",
    "StepRecord",
    "WorkerPlan",
    "WorkerSession",
    "run_worker",
]

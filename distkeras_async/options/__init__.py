"""Every run option, declared once (typed, frozen groups that validate themselves).

The trainer's keyword arguments, the estimator's Spark ML Params, ``WorkerPlan``, the
parameter server's arguments and the ``distkeras-async serve`` flags all derive from the
groups here (``docs/architecture.md``, "Where an option is declared"). This package imports
neither Spark nor Keras, so every layer reads it.
"""

from distkeras_async.options.bundle import Options
from distkeras_async.options.declare import (
    Declared,
    Spec,
    bind,
    declared,
    keyword_parameters,
    option,
    replace,
    validate,
)
from distkeras_async.options.groups import (
    GROUPS,
    CheckpointOptions,
    Columns,
    DataOptions,
    DeviceOptions,
    FailureOptions,
    RunOptions,
    ServerOptions,
    Timeouts,
    TlsSetting,
)
from distkeras_async.options.values import (
    BACKENDS,
    FRAME_TIMEOUT,
    IDLE_TIMEOUT,
    IN_MEMORY_LIMIT,
    ROUND_TIMEOUT,
)

__all__ = [
    "BACKENDS",
    "FRAME_TIMEOUT",
    "GROUPS",
    "IDLE_TIMEOUT",
    "IN_MEMORY_LIMIT",
    "ROUND_TIMEOUT",
    "CheckpointOptions",
    "Columns",
    "DataOptions",
    "Declared",
    "DeviceOptions",
    "FailureOptions",
    "Options",
    "RunOptions",
    "ServerOptions",
    "Spec",
    "Timeouts",
    "TlsSetting",
    "bind",
    "declared",
    "keyword_parameters",
    "option",
    "replace",
    "validate",
]

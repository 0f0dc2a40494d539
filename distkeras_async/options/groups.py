"""Every run option, declared once, in seven frozen groups a reader can take in at once.

A group validates itself on construction (:func:`~distkeras_async.options.declare.validate`
runs each field's check, then the group checks what spans fields), so a group instance
holds valid values only. The trainer takes the options as flat keyword arguments
(``DOWNPOUR(..., shuffle_window=4096)``) and sorts them into these groups; ``WorkerPlan``
carries the groups to the workers; the parameter server takes :class:`Timeouts` and
:class:`CheckpointOptions`; the estimator's Params and the ``serve`` flags are generated from
the ``param`` and ``flag`` each option declares.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from distkeras_async.options.declare import option, validate
from distkeras_async.options.values import (
    BACKENDS,
    FRAME_TIMEOUT,
    IDLE_TIMEOUT,
    IN_MEMORY_LIMIT,
    REPLY_MARGIN,
    ROUND_TIMEOUT,
    backend_name,
    boolean,
    class_weights,
    columns,
    device_name,
    nonnegative_int,
    optional_boolean,
    optional_name,
    optional_positive_int,
    optional_positive_number,
    path,
    port,
    positive_int,
    positive_number,
    retry_mode,
    secret,
    tls_ca,
    tls_for_shards,
    tls_setting,
    worker_class,
)

TlsSetting: TypeAlias = ssl.SSLContext | tuple[str, str] | None
"""A server-side TLS context, or ``(certificate, key)`` PEM paths, or None for plain TCP."""

Columns: TypeAlias = str | Sequence[str]
"""A column name, or a list of them (one per model input or output)."""


@dataclass(frozen=True)
class RunOptions:
    """What the run is: how many workers, how many passes, how many rows per step."""

    num_workers: int = option(
        2,
        "Spark tasks training in parallel (synchronous algorithms need as many slots)",
        positive_int,
        param="numWorkers",
        flag="--workers",
    )
    num_epoch: int = option(1, "passes over the data", positive_int, param="numEpochs")
    batch_size: int = option(32, "samples per local step", positive_int, param="batchSize")
    worker_class: type[Any] | None = option(
        None,
        "a KerasWorker subclass that customises each worker (docs/custom-worker.md)",
        worker_class,
    )
    progress: bool | None = option(
        None,
        "show a progress bar (default: when attached to a terminal or notebook)",
        optional_boolean,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ServerOptions:
    """Where the parameter server listens, how workers reach it, and what protects it."""

    master_port: int = option(
        5000, "the parameter server's port (0: a free one)", port, flag="--port"
    )
    master_host: str | None = option(
        None,
        "the address workers connect to (default: spark.driver.host)",
        optional_name,
    )
    bind_host: str | None = option(
        None,
        "the address the parameter server listens on (default: master_host)",
        optional_name,
        flag="--host",
    )
    shards: int | None = option(
        None,
        "parameter server processes the center is split across (default: chosen from the "
        "model's size and the driver's cores; docs/scaling.md)",
        optional_positive_int,
        param="shards",
        flag="--shards",
    )
    secret: bytes | None = option(
        None, "the run's shared secret (default: a fresh random one per run)", secret
    )
    ssl_context: TlsSetting = option(
        None,
        "the server's TLS: an ssl.SSLContext, or (certificate_file, key_file) PEM paths",
        tls_setting,
    )
    tls_ca: str | None = option(
        None,
        "the CA certificate(s) workers verify the server with: PEM text or a file's path",
        tls_ca,
    )
    tls_server_hostname: str | None = option(
        None,
        "the name workers expect in the server's certificate (default: the address)",
        optional_name,
    )

    def __post_init__(self) -> None:
        validate(self)
        tls_for_shards(self.ssl_context, self.shards)
        if (self.ssl_context is None) != (self.tls_ca is None):
            raise ValueError(
                "TLS needs both ssl_context (the server's certificate) and tls_ca (what the "
                "workers verify it with)"
            )


@dataclass(frozen=True)
class Timeouts:
    """How long each wait of the parameter server may last, in seconds: nothing hangs."""

    round_timeout: float = option(
        ROUND_TIMEOUT,
        "seconds a synchronous round waits for its slowest worker",
        positive_number,
        param="roundTimeout",
        flag="--round-timeout",
    )
    idle_timeout: float = option(
        IDLE_TIMEOUT,
        "seconds a worker may stay silent between exchanges before the server drops it",
        positive_number,
        param="idleTimeout",
        flag="--idle-timeout",
    )
    frame_timeout: float = option(
        FRAME_TIMEOUT,
        "seconds a message has, from its first byte, to arrive whole",
        positive_number,
        flag="--frame-timeout",
    )
    handshake_timeout: float = option(
        10.0,
        "seconds a new connection has to authenticate",
        positive_number,
        flag="--handshake-timeout",
    )
    send_timeout: float = option(
        60.0,
        "seconds a worker may leave a reply unread",
        positive_number,
        flag="--send-timeout",
    )

    def __post_init__(self) -> None:
        validate(self)

    @property
    def client(self) -> float:
        """Seconds a worker's call to the server may take: a whole round, and some margin."""
        return max(120.0, self.round_timeout + REPLY_MARGIN)


@dataclass(frozen=True)
class DataOptions:
    """Which columns train, how rows are weighted, held, shuffled and seeded."""

    features_col: Columns = option(
        "features", "the feature column, or a list of them (multi-input)", columns
    )
    label_col: Columns = option(
        "label", "the label column, or a list of them (multi-output)", columns
    )
    sample_weight_col: str | None = option(
        None,
        "a numeric column of per-row weights (default: every row weighs 1)",
        optional_name,
        param="sampleWeightCol",
    )
    class_weight: Mapping[int, float] | None = option(
        None,
        "{class index: weight} multiplying the weight of each class's rows",
        class_weights,
        param="classWeight",
    )
    in_memory_limit: int = option(
        IN_MEMORY_LIMIT,
        "bytes up to which a worker holds its partition in memory; larger ones stream "
        "from a local file (0: always stream)",
        nonnegative_int,
        param="inMemoryLimit",
    )
    shuffle_window: int | None = option(
        None,
        "rows a streamed partition shuffles together (default: about 32 MiB of rows)",
        optional_positive_int,
        param="shuffleWindow",
    )
    seed: int = option(
        0,
        "the seed of the shuffles (and of a validation split)",
        nonnegative_int,
        param="seed",
    )

    def __post_init__(self) -> None:
        validate(self)

    @property
    def features(self) -> tuple[str, ...]:
        """The feature columns, one per model input."""
        return tuple(self.features_col)

    @property
    def labels(self) -> tuple[str, ...]:
        """The label columns, one per model output."""
        return tuple(self.label_col)

    @property
    def weight_columns(self) -> tuple[str, ...]:
        """The sample weight column, if any."""
        return () if self.sample_weight_col is None else (self.sample_weight_col,)


@dataclass(frozen=True)
class FailureOptions:
    """What a failure does, and which checks guard the run."""

    on_retry: str = option(
        "resume",
        "what Spark's retry of a failed asynchronous worker does: 'resume' after the steps "
        "the server applied, or 'restart' its partition",
        retry_mode,
        param="onRetry",
    )
    allow_nonfinite_inputs: bool = option(
        False,
        "let NaN and infinity in the feature and label columns reach the model",
        boolean,
        param="allowNonfiniteInputs",
    )
    check_learning: bool = option(
        True,
        "warn when the returned center kept less than half of what the workers learned",
        boolean,
        param="checkLearning",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class CheckpointOptions:
    """Where and how often the center is saved (or recorded in memory) during a run."""

    checkpoint_path: str | None = option(
        None,
        "write the center there, atomically, periodically and at the end",
        path,
        flag="--checkpoint-path",
    )
    checkpoint_every: int | None = option(
        None, "updates between checkpoints", optional_positive_int, flag="--checkpoint-every"
    )
    checkpoint_interval: float | None = option(
        None,
        "seconds between checkpoints (default 60 when neither this nor checkpoint_every is set)",
        optional_positive_number,
        flag="--checkpoint-interval",
    )
    snapshot_interval: float | None = option(
        None,
        "record the center in memory every this many seconds (get_center_snapshots)",
        optional_positive_number,
    )

    def __post_init__(self) -> None:
        validate(self)
        if (
            self.checkpoint_path is not None
            and self.checkpoint_every is None
            and self.checkpoint_interval is None
        ):
            object.__setattr__(self, "checkpoint_interval", 60.0)


@dataclass(frozen=True)
class DeviceOptions:
    """Where the workers and the driver compute, and how the exchange overlaps it."""

    backend: str | None = option(
        None,
        "the Keras backend the workers train on: tensorflow, jax or torch (default: the "
        "driver's KERAS_BACKEND)",
        backend_name,
        param="backend",
    )
    use_gpu: bool | None = option(
        None,
        "train on the GPUs Spark gives each task (True), on the CPU only (False), or "
        "(default) on the task's GPUs when spark.task.resource.gpu.amount is set",
        optional_boolean,
        param="useGpu",
    )
    worker_threads: int | None = option(
        None,
        "TensorFlow threads per worker (default: the task's cores)",
        optional_positive_int,
        param="workerThreads",
    )
    driver_device: str = option(
        "cpu",
        "the Keras device the driver's copy of the model evaluates on",
        device_name,
    )
    overlap: bool = option(
        False,
        "run each worker's exchange in the background while its next local steps run "
        "(asynchronous algorithms only; docs/scaling.md)",
        boolean,
        param="overlap",
    )

    def __post_init__(self) -> None:
        validate(self)


GROUPS: tuple[type[Any], ...] = (
    RunOptions,
    ServerOptions,
    Timeouts,
    DataOptions,
    FailureOptions,
    CheckpointOptions,
    DeviceOptions,
)
"""Every option group, in the order the trainer's signature lists them."""

__all__ = [
    "BACKENDS",
    "GROUPS",
    "CheckpointOptions",
    "Columns",
    "DataOptions",
    "DeviceOptions",
    "FailureOptions",
    "RunOptions",
    "ServerOptions",
    "Timeouts",
    "TlsSetting",
]

"""A worker's plan: everything it needs, as plain values that travel inside the Spark job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.options import (
    DataOptions,
    DeviceOptions,
    FailureOptions,
    RunOptions,
    bind,
)


@dataclass(frozen=True)
class Endpoint:
    """How a worker reaches the parameter server.

    Attributes:
        host: the parameter server's address.
        ports: every shard's port, in shard order (one: an unsharded server).
        secret: this run's secret.
        timeout: seconds any parameter server call may take.
        tls_ca: PEM CA certificates to verify the server's TLS certificate (None: plain TCP).
        tls_server_hostname: the name expected in that certificate (None: ``host``).
    """

    host: str
    ports: tuple[int, ...]
    secret: bytes
    timeout: float = 120.0
    tls_ca: str | None = None
    tls_server_hostname: str | None = None

    @property
    def port(self) -> int:
        """The first (or only) shard's port."""
        return self.ports[0]


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs, as plain values (it travels inside the Spark job).

    The run options reach the worker as the groups they are declared in
    (:mod:`distkeras_async.options`): a new option of a group needs no new field here.

    Attributes:
        model_spec: JSON of the :class:`ModelSpec`.
        algorithm: a registered algorithm name, or an Algorithm class.
        hyperparameters: the algorithm's hyperparameters.
        endpoint: where the parameter server is and how to talk to it.
        epochs: passes over the partition in this job (fewer than ``run.num_epoch`` when a
            run resumes at a later epoch).
        shuffle: reshuffle the partition every epoch.
        custom_objects: custom Keras classes and functions, by name.
        terminate_on_nan: a worker whose loss becomes NaN stops the run gracefully (the
            driver has ``TerminateOnNaN``), instead of failing it.
        exchange_at_epoch_end: also exchange at the end of every pass over the partition
            (the driver runs callbacks or validation on the center then).
        run: workers, batch size, the worker class.
        data: columns, weights, the in-memory limit, the shuffle window, the seed.
        failures: what a retried attempt does, whether non-finite inputs are allowed.
        devices: the backend and whether to use the task's GPUs (both resolved on the
            driver), threads, overlap.
    """

    model_spec: str
    algorithm: str | type[Algorithm]
    hyperparameters: Mapping[str, Any]
    endpoint: Endpoint
    epochs: int = 1
    shuffle: bool = False
    custom_objects: Mapping[str, Any] = field(default_factory=dict)
    terminate_on_nan: bool = False
    exchange_at_epoch_end: bool = False
    run: RunOptions = field(default_factory=RunOptions)
    data: DataOptions = field(default_factory=DataOptions)
    failures: FailureOptions = field(default_factory=FailureOptions)
    devices: DeviceOptions = field(default_factory=lambda: DeviceOptions(backend="tensorflow"))

    @property
    def backend(self) -> str:
        """The Keras backend the workers run on (resolved on the driver)."""
        return self.devices.backend or "tensorflow"

    @property
    def use_gpu(self) -> bool:
        """Whether workers train on their task's GPUs (resolved on the driver)."""
        return bool(self.devices.use_gpu)

    @property
    def columns(self) -> list[str]:
        """The DataFrame columns a worker receives: features, labels, then the weight."""
        data = self.data
        return [*data.features, *data.labels, *data.weight_columns]

    @classmethod
    def create(
        cls,
        model_spec: str,
        algorithm: str | type[Algorithm],
        endpoint: Endpoint,
        *,
        hyperparameters: Mapping[str, Any] | None = None,
        epochs: int = 1,
        shuffle: bool = False,
        **options: Any,
    ) -> WorkerPlan:
        """A plan from run options given as flat keywords (``batch_size=16``, ...).

        For workers run without a trainer (benchmarks, tests, a hand-made run); the trainer
        builds its plans from the groups it already holds.

        Raises:
            TypeError: for a keyword that is not an option of the groups a plan carries
                (``num_epoch`` included: the passes a worker makes are ``epochs``).
        """
        carried = (RunOptions, DataOptions, FailureOptions, DeviceOptions)
        groups, rest = bind({k: v for k, v in options.items() if k != "num_epoch"}, carried)
        if rest or "num_epoch" in options:
            wrong = sorted([*rest, *(["num_epoch"] if "num_epoch" in options else [])])
            raise TypeError(f"a worker plan does not take {wrong} (passes: epochs=)")
        devices = groups[DeviceOptions]
        return cls(
            model_spec,
            algorithm,
            dict(hyperparameters or {}),
            endpoint,
            epochs=epochs,
            shuffle=shuffle,
            run=replace(groups[RunOptions], num_epoch=epochs),
            data=groups[DataOptions],
            failures=groups[FailureOptions],
            devices=replace(devices, backend=devices.backend or "tensorflow"),
        )

    def make_algorithm(self) -> Algorithm:
        """A fresh instance of the plan's algorithm for this worker."""
        return registry.resolve(self.algorithm, **self.hyperparameters)

"""What the driver's code uses of a parameter server, whichever kind runs.

:func:`~distkeras_async.server.factory.make_server` returns a
:class:`~distkeras_async.server.parameter_server.ParameterServer` (one process) or a
:class:`~distkeras_async.server.sharded.ShardedParameterServer` (shard processes); the
trainers, ``distkeras-async serve`` and the benchmarks use either through
:class:`RunningServer`, so they read only what both provide, and a server that stopped
providing a member fails ``mypy`` in the factory, not a run.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import DistKerasError, ErrorCode
from distkeras_async.server.stats import ServerStats
from distkeras_async.server.update import StepRecord


class RunningServer(Protocol):
    """A parameter server as the driver uses it: its lifecycle, center, statistics, failure."""

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> int | tuple[int, ...]:
        """Start serving in the background; the port (one server) or the shards' ports.

        Raises:
            OSError: if an address cannot be bound.
        """
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: close every connection and free the ports. Idempotent."""
        ...

    @property
    def running(self) -> bool:
        """Whether it serves now."""
        ...

    @property
    def ports(self) -> tuple[int, ...]:
        """The ports workers connect to, in shard order (one for a single server).

        Raises:
            RuntimeError: before :meth:`start`.
        """
        ...

    # -- the run -----------------------------------------------------------------------

    @property
    def algorithm(self) -> Algorithm:
        """The server's instance of the run's algorithm."""
        ...

    @property
    def num_workers(self) -> int:
        """Workers in the run."""
        ...

    @property
    def center(self) -> list[np.ndarray]:
        """A copy of the center, as a weight list."""
        ...

    @property
    def version(self) -> int:
        """Updates applied to the center so far."""
        ...

    def stats(self) -> ServerStats:
        """A snapshot of the server's statistics (per worker: commits, metrics, epochs)."""
        ...

    def unfinished_attempts(self) -> dict[tuple[int, int], list[StepRecord]]:
        """The step records of every ``(worker, attempt)`` that never said goodbye."""
        ...

    def checkpoint(self, path: str | os.PathLike[str] | None = None) -> int:
        """Write the current center to ``path`` (default: ``checkpoint_path``); its version."""
        ...

    # -- the driver's requests and epochs ----------------------------------------------

    def request(self, *, stop: bool | None = None, learning_rate: float | None = None) -> None:
        """Ask every worker, on its next reply, to stop or to change its learning rate."""
        ...

    def keep_epoch_centers(self) -> None:
        """Keep a copy of the center as each global epoch ends, from now on."""
        ...

    def take_epoch_center(self, epoch: int) -> list[np.ndarray] | None:
        """The center as global ``epoch`` ended, once; None if it is not (yet) kept."""
        ...

    # -- failure -----------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why the run failed (a rule raised, a round timed out, a worker died), or None."""
        ...

    @property
    def failure_code(self) -> ErrorCode | None:
        """The machine-readable kind of :attr:`failure`, or None."""
        ...

    def failure_error(self, detail: str | None = None) -> DistKerasError | None:
        """The exception :meth:`raise_for_failure` would raise, or None."""
        ...

    def raise_for_failure(self, detail: str | None = None) -> None:
        """Raise the run's failure, if any, as the exception its code names."""
        ...

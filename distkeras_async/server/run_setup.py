"""What every parameter server does first, and how it reports a failure: one place for both.

:class:`~distkeras_async.server.parameter_server.ParameterServer` (one process) and
:class:`~distkeras_async.server.sharded.ShardedParameterServer` (K shard processes) take the
same arguments and must refuse the same bad ones, resume the same checkpoints and raise the
same errors; :func:`prepare_run` and :class:`FailureReporting` are that shared part.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distkeras_async import checks, registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import DistKerasError, ErrorCode, from_code
from distkeras_async.layout import Layout
from distkeras_async.server.checkpoint import (
    Checkpoint,
    Checkpointer,
    check_resumable,
    check_writable,
    load_checkpoint,
    save_checkpoint,
)
from distkeras_async.server.core import Failure

logger = logging.getLogger("distkeras_async.server")


@dataclass(frozen=True, slots=True)
class RunSetup:
    """A server's checked starting point."""

    algorithm: Algorithm
    layout: Layout
    initial: np.ndarray  # the flat center to start from (the checkpoint's when resuming)
    initial_version: int
    checkpointer: Checkpointer | None


def check_limits(
    *,
    num_workers: int,
    port: int,
    timeouts: dict[str, float],
    max_connections: int | None,
    receive_buffers: int | None,
    center_buffers: int,
) -> None:
    """Refuse a bad worker count, port, timeout or buffer limit, naming the argument."""
    checks.positive_int(num_workers, "num_workers")
    checks.port(port, "port")
    checks.optional_positive_int(max_connections, "max_connections")
    checks.optional_positive_int(receive_buffers, "receive_buffers")
    checks.positive_int(center_buffers, "center_buffers", minimum=2)
    for name, value in timeouts.items():
        checks.positive_number(value, name)


def prepare_run(
    weights: Sequence[np.ndarray] | np.ndarray,
    algorithm: str | type[Algorithm] | Algorithm,
    hyperparameters: dict[str, Any],
    *,
    num_workers: int,
    version: int = 0,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    checkpoint_interval: float | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> RunSetup:
    """The algorithm, the layout, the center to start from and the checkpointer.

    Raises:
        ValueError: for a model without weights, or checkpoint settings without a period.
        CheckpointError: for a checkpoint of another algorithm, settings or layout.
    """
    if isinstance(weights, np.ndarray):
        weights = [weights]
    resolved = registry.resolve(algorithm, **hyperparameters)
    registry.check_workers(resolved, num_workers)
    layout = Layout.of(weights)
    if layout.size == 0:
        raise ValueError("the model has no weights to train")
    initial = layout.flatten(weights)
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, layout)
        check_resumable(resumed, resume_from, resolved.name, resolved.settings)
        initial, version = resumed.center, resumed.version
        logger.info("resuming from %s at version %d", resume_from, resumed.version)
    checkpointer = None
    if checkpoint_path is not None:
        if checkpoint_every is None and checkpoint_interval is None:
            raise ValueError("give checkpoint_every and/or checkpoint_interval")
        check_writable(checkpoint_path)
        checkpointer = Checkpointer(
            checkpoint_path,
            layout,
            resolved.name,
            resolved.settings,
            every=checkpoint_every,
            interval=checkpoint_interval,
        )
    return RunSetup(resolved, layout, initial, version, checkpointer)


class FailureReporting:
    """A server's failure as a reason, a code and an exception, and its checkpoints.

    A server provides :meth:`_failure`, :meth:`_snapshot` and the attributes ``layout``,
    ``algorithm`` and ``checkpointer``.
    """

    layout: Layout
    algorithm: Algorithm
    checkpointer: Checkpointer | None

    def _failure(self) -> Failure | None:
        raise NotImplementedError

    def _snapshot(self) -> tuple[np.ndarray, int]:
        """A copy of the center and its version, consistent with each other."""
        raise NotImplementedError

    @property
    def failure(self) -> str | None:
        """Why the run failed (a rule raised, a round timed out, a worker died), or None."""
        failure = self._failure()
        return None if failure is None else failure.reason

    @property
    def failure_code(self) -> ErrorCode | None:
        """The machine-readable kind of :attr:`failure`, or None."""
        failure = self._failure()
        return None if failure is None else failure.code

    def raise_for_failure(self, detail: str | None = None) -> None:
        """Raise the run's failure, if any, as the exception its code names.

        :class:`~distkeras_async.errors.RuleFailedError` when the algorithm's rule raised,
        :class:`~distkeras_async.errors.RoundFailedError` for a failed synchronous round,
        :class:`~distkeras_async.errors.WorkerReportedError` when a worker reported failing.

        Args:
            detail: appended to the message (e.g. the failing worker's traceback).
        """
        error = self.failure_error(detail)
        if error is not None:
            raise error

    def failure_error(self, detail: str | None = None) -> DistKerasError | None:
        """The exception :meth:`raise_for_failure` would raise, or None."""
        failure = self._failure()
        if failure is None:
            return None
        message = failure.reason if detail is None else f"{failure.reason}\n{detail}"
        return from_code(failure.code, message)

    def checkpoint(self, path: str | os.PathLike[str] | None = None) -> int:
        """Write the current center to ``path`` (default: ``checkpoint_path``) now.

        Returns:
            The version written.
        """
        target: str | os.PathLike[str] | None = path
        if target is None and self.checkpointer is not None:
            target = self.checkpointer.path
        if target is None:
            raise ValueError("no checkpoint path: pass one, or construct with checkpoint_path")
        center, version = self._snapshot()
        save_checkpoint(
            target,
            Checkpoint(center, version, self.layout, self.algorithm.name, self.algorithm.settings),
        )
        return version

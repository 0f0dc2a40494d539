"""What every parameter server does first, and how it reports a failure: one place for both.

:class:`~distkeras_async.server.parameter_server.ParameterServer` (one process) and
:class:`~distkeras_async.server.sharded.ShardedParameterServer` (K shard processes) take the
same arguments and must refuse the same bad ones, resume the same checkpoints and raise the
same errors; :func:`sort_arguments`, :func:`prepare_run` and :class:`FailureReporting` are
that shared part.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from distkeras_async import checks, registry
from distkeras_async.algorithm import Algorithm, unflatten_state
from distkeras_async.errors import (
    AlgorithmError,
    CheckpointError,
    DistKerasError,
    ErrorCode,
    from_code,
)
from distkeras_async.layout import Layout
from distkeras_async.options import (
    CheckpointOptions,
    Timeouts,
    bind,
    declared,
    keyword_parameters,
)
from distkeras_async.server.checkpoint import (
    Checkpoint,
    Checkpointer,
    check_resumable,
    check_writable,
    load_checkpoint,
    save_checkpoint,
)
from distkeras_async.server.core import Failure
from distkeras_async.server.limits import Capacity

logger = logging.getLogger("distkeras_async.server")


@dataclass(frozen=True, slots=True)
class RunSetup:
    """A server's checked starting point."""

    algorithm: Algorithm
    layout: Layout
    initial: np.ndarray  # the flat center to start from (the checkpoint's when resuming)
    initial_version: int
    checkpointer: Checkpointer | None
    rule_state: tuple[np.ndarray, ...] = ()  # the server rule's, from the checkpoint resumed


SERVER_GROUPS: dict[str, type[Any]] = {
    "timeouts": Timeouts,
    "checkpoints": CheckpointOptions,
    "capacity": Capacity,
}
"""The option groups a server takes, by the name of the parameter that takes each whole."""

# The trainer records its snapshots itself (it reads the center on the driver); a server
# has no use for the option, so it neither lists nor accepts it.
NOT_SERVER_OPTIONS = frozenset({"snapshot_interval"})


@dataclass(frozen=True, slots=True)
class ServerArguments:
    """A server's keyword arguments, sorted into its option groups and the rest."""

    timeouts: Timeouts
    checkpoints: CheckpointOptions
    capacity: Capacity
    hyperparameters: dict[str, Any]  # what no group declares: the algorithm's


def sort_arguments(keywords: Mapping[str, Any], **groups: Any) -> ServerArguments:
    """Sort flat keyword arguments into the option groups; ``groups`` are those given whole.

    Args:
        keywords: a server's ``**keywords``: flat options (``round_timeout=1.0``,
            ``checkpoint_path=...``) and the algorithm's hyperparameters.
        **groups: ``timeouts``, ``checkpoints`` and ``capacity`` as the caller passed them
            (None: built from the flat options and the declared defaults).

    Raises:
        TypeError: for a group and one of its own options both given, a group of the
            wrong type, or an option only the trainer takes.
        ValueError: from an option's check, naming it.
    """
    refused = sorted(NOT_SERVER_OPTIONS & keywords.keys())
    if refused:
        raise TypeError(f"the parameter server does not take {', '.join(refused)} (a trainer's)")
    missing = []
    for parameter, group in SERVER_GROUPS.items():
        given = groups.get(parameter)
        if given is None:
            missing.append(group)
            continue
        if not isinstance(given, group):
            raise TypeError(f"{parameter} must be a {group.__name__}, got {given!r}")
        both = [item.name for item in declared(group) if item.name in keywords]
        if both:
            raise TypeError(f"pass {parameter} or {', '.join(both)}, not both")
    _check_checkpoint_period(keywords)
    bound, rest = bind(keywords, missing)
    whole = {
        parameter: bound[group] if groups.get(parameter) is None else groups[parameter]
        for parameter, group in SERVER_GROUPS.items()
    }
    return ServerArguments(**whole, hyperparameters=rest)


def _check_checkpoint_period(keywords: Mapping[str, Any]) -> None:
    # A server given a flat checkpoint_path and no period has always refused it (the
    # trainer and ``serve`` default to 60 s, through CheckpointOptions): a group given whole
    # carries its own period.
    if keywords.get("checkpoint_path") is not None and all(
        keywords.get(name) is None for name in ("checkpoint_every", "checkpoint_interval")
    ):
        raise ValueError("give checkpoint_every and/or checkpoint_interval")


F = TypeVar("F", bound=Callable[..., None])


def with_option_parameters(init: F) -> F:
    """Give a server's ``__init__`` a signature listing every option it takes, flat.

    ``inspect.signature``, ``help()`` and IDEs then show each option of
    :data:`SERVER_GROUPS` as a keyword-only parameter with its declared default, although
    ``**keywords`` takes them.
    """
    signature = inspect.signature(init)
    named = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    rest = [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    flat = [
        p for p in keyword_parameters(SERVER_GROUPS.values()) if p.name not in NOT_SERVER_OPTIONS
    ]
    init.__signature__ = signature.replace(parameters=[*named, *flat, *rest])  # type: ignore[attr-defined]
    return init


def check_limits(*, num_workers: int, port: int) -> None:
    """Refuse a bad worker count or port, naming the argument."""
    checks.positive_int(num_workers, "num_workers")
    checks.port(port, "port")


def prepare_run(
    weights: Sequence[np.ndarray] | np.ndarray,
    algorithm: str | type[Algorithm] | Algorithm,
    hyperparameters: dict[str, Any],
    *,
    num_workers: int,
    checkpoints: CheckpointOptions,
    version: int = 0,
    resume_from: str | os.PathLike[str] | None = None,
) -> RunSetup:
    """The algorithm, the layout, the center to start from and the checkpointer.

    Raises:
        ValueError: for a model without weights.
        CheckpointError: for a checkpoint of another algorithm, settings or layout, or a
            checkpoint path that cannot be written.
    """
    if isinstance(weights, np.ndarray):
        weights = [weights]
    resolved = registry.resolve(algorithm, **hyperparameters)
    registry.check_workers(resolved, num_workers)
    layout = Layout.of(weights)
    if layout.size == 0:
        raise ValueError("the model has no weights to train")
    initial = layout.flatten(weights)
    rule_state: tuple[np.ndarray, ...] = ()
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, layout)
        check_resumable(resumed, resume_from, resolved.name, resolved.settings)
        initial, version = resumed.center, resumed.version
        rule_state = check_rule_state(resolved, layout, resumed.rule_state, resume_from)
        logger.info("resuming from %s at version %d", resume_from, resumed.version)
    checkpointer = None
    if checkpoints.checkpoint_path is not None:
        check_writable(checkpoints.checkpoint_path)
        checkpointer = Checkpointer(
            checkpoints.checkpoint_path,
            layout,
            resolved.name,
            resolved.settings,
            every=checkpoints.checkpoint_every,
            interval=checkpoints.checkpoint_interval,
        )
    return RunSetup(resolved, layout, initial, version, checkpointer, rule_state)


def check_rule_state(
    algorithm: Algorithm, layout: Layout, arrays: tuple[np.ndarray, ...], path: object
) -> tuple[np.ndarray, ...]:
    """``arrays``, a checkpoint's server rule state, if they are ``algorithm``'s.

    Raises:
        CheckpointError: naming the checkpoint and how its state differs.
    """
    algorithm.server_start(layout)
    try:
        unflatten_state(algorithm.server_state(), arrays)
    except AlgorithmError as exc:
        raise CheckpointError(
            f"{path} holds a server rule state that is not algorithm {algorithm.name!r}'s: {exc}"
        ) from None
    return arrays


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

    def _snapshot_with_rule_state(self) -> tuple[np.ndarray, int, tuple[np.ndarray, ...]]:
        """:meth:`_snapshot` and copies of the server rule's state at that version."""
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
        center, version, rule_state = self._snapshot_with_rule_state()
        save_checkpoint(
            target,
            Checkpoint(
                center,
                version,
                self.layout,
                self.algorithm.name,
                self.algorithm.settings,
                rule_state,
            ),
        )
        return version

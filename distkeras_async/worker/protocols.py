"""What the worker's loop and its hooks need from a connection to the parameter server.

Three classes provide it: :class:`~distkeras_async.worker.client.ParameterServerClient` (one
server), :class:`~distkeras_async.worker.sharded_client.ShardedClient` (every shard of a
sharded one) and :class:`~distkeras_async.worker.overlap.OverlappedClient` (either, with the
exchanges in a background thread). The worker's code is typed with these protocols, not with
the classes, so it reads only what they list, and a class that stopped providing a member
fails ``mypy`` where the three meet (:mod:`distkeras_async.worker.connection`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from distkeras_async.algorithm import ServerHandle, State
from distkeras_async.layout import Layout
from distkeras_async.wire.messages import Control

Record = tuple[int, float, Mapping[str, float]]
"""One local step as it travels to the server: ``(iteration, timestamp, metrics)``."""


class ExchangeClient(ServerHandle, Protocol):
    """What the worker's loop and its hooks use: the rule's exchanges, reports, progress.

    Besides :class:`~distkeras_async.algorithm.ServerHandle`'s ``pull``, ``commit`` and
    ``commit_pull`` (the rule's), the worker reads the layout the server holds, its own
    identity (for messages), the steps already applied (a retried task resumes after them)
    and the driver's requests, and it hands the step records and the step count to the next
    commit.
    """

    # Settable: the worker hands them to the next commit, which sends and clears them.
    steps: int | None
    """Local steps so far, sent with the next commit (None: not known yet)."""
    history: list[Record]
    """Records of the steps since the previous commit, sent with the next one."""
    state_source: Callable[[], State] | None
    """Where the rule's state after each commit comes from, to travel ahead of it (set only
    where :attr:`carries_state`)."""

    @property
    def carries_state(self) -> bool:
        """Whether a rule's state can travel with the commits and back to a retry."""
        ...

    @property
    def restored_state(self) -> tuple[np.ndarray, ...] | None:
        """The rule's state at this worker's last accepted commit, sent by the server."""
        ...

    @property
    def layout(self) -> Layout:
        """The layout of the center the server holds (the whole model's, even sharded)."""
        ...

    @property
    def worker_id(self) -> int:
        """This worker's id (the Spark partition id)."""
        ...

    @property
    def attempt(self) -> int:
        """The Spark task attempt number."""
        ...

    @property
    def progress(self) -> int:
        """Local steps of this worker the server had applied when it connected."""
        ...

    @property
    def control(self) -> Control:
        """The driver's requests (stop, a learning rate), from the latest reply."""
        ...

    def report(
        self,
        metrics: Mapping[str, float],
        history: Sequence[Record] = (),
        *,
        epoch: int | None = None,
    ) -> None:
        """Send metrics (and step records) to the server; ``epoch`` marks a pass's logs."""
        ...


class Connection(ExchangeClient, Protocol):
    """A worker's own connection (one server or every shard): what an overlap wraps.

    Beyond :class:`ExchangeClient`, it tells the version of the center in its latest reply
    (one per shard), takes the version the next commit was computed from when that is older
    (an overlapped worker's), and closes.
    """

    bases: tuple[int, ...] | None
    """The center versions (per shard) the next commit was computed from, if not the latest."""

    @property
    def versions(self) -> tuple[int, ...]:
        """The center's version in the latest reply, one per shard."""
        ...

    def close(self) -> None:
        """Say goodbye and close the connection. Idempotent."""
        ...

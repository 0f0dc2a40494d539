"""A commit on its way to the center, and the interface through which the core answers it.

:class:`Peer` is all the core knows of a connection; :class:`Update` is a validated commit
that owns its receive buffer until it is applied, dropped with its round, or the run fails.
"""

from __future__ import annotations

from typing import Protocol

from distkeras_async.algorithm import UpdateMeta
from distkeras_async.errors import ErrorCode
from distkeras_async.server.buffers import Buffer, Lease
from distkeras_async.server.limits import Limits
from distkeras_async.wire.compression import all_finite
from distkeras_async.wire.messages import NO_CONTROL, Commit, Control, Message

__all__ = ["Peer", "StepRecord", "Update", "all_finite"]

# One step of a worker's history as it travels: (iteration, timestamp, metrics).
StepRecord = tuple[int, float, dict[str, float]]


class Peer(Protocol):
    """What the core may do with a connection (a session implements it)."""

    @property
    def worker(self) -> int | None:
        """The authenticated worker id, or None before the handshake."""
        ...

    def send(self, message: Message) -> None:
        """Reply with a message that carries no center."""
        ...

    def send_center(
        self, buffer: Buffer, version: int, duplicate: bool = False, control: Control = NO_CONTROL
    ) -> None:
        """Reply with the center held in ``buffer`` at ``version`` (and the driver's control)."""
        ...

    def fail(self, code: ErrorCode, reason: str) -> None:
        """Send an error frame and close."""
        ...

    def sweep(self, now: float, limits: Limits) -> None:
        """Close the connection if one of its timeouts expired."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (the server is stopping)."""
        ...


class Update:
    """A validated commit waiting to be applied; it owns its receive buffer's lease."""

    __slots__ = ("lease", "message", "norm", "peer", "pulled_version")

    def __init__(
        self, peer: Peer, message: Commit, lease: Lease, pulled_version: int, norm: float
    ) -> None:
        self.peer = peer
        self.message = message
        self.lease = lease
        self.pulled_version = pulled_version
        self.norm = norm  # sqrt(u . u): bounds every element (inf when not checked)

    @property
    def worker(self) -> int:
        """The committing worker."""
        return self.message.worker

    def meta(self, version: int) -> UpdateMeta:
        """What the rule sees of this commit, applied at ``version``."""
        m = self.message
        return UpdateMeta(m.worker, self.pulled_version, version, m.attempt, m.seq)

    def release(self) -> None:
        """Give the receive buffer back (idempotent)."""
        self.lease.release()

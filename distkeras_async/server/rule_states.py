"""The worker rules' states the server keeps, so a retried task resumes with its rule's state.

A worker whose rule keeps state (a momentum, EAMSGD's velocity) sends it in a ``state``
message just before each commit (``wire/messages.py``: :class:`RuleState`). The server holds
it for that connection and keeps it as the worker's state only when it accepts the commit
that follows: a resent commit (a duplicate) or a connection lost before its commit leaves
the kept state as it was. A retried attempt of the worker is sent the kept state after its
welcome, so it resumes with the state its predecessor had at its last applied commit, as it
resumes after the local steps that commit included (``progress``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from distkeras_async.algorithm import Algorithm, flatten_state
from distkeras_async.errors import RemoteProtocolError
from distkeras_async.wire.schema import TensorSpec

if TYPE_CHECKING:
    from distkeras_async.layout import Layout
    from distkeras_async.server.update import Peer


class WorkerStates:
    """Each worker's rule state at its last accepted commit, and the ones on their way.

    Args:
        algorithm: the server's instance of the algorithm (for the state's form).
        layout: the model's layout.
    """

    def __init__(self, algorithm: Algorithm, layout: Layout) -> None:
        template = flatten_state(algorithm.initial_worker_state(layout))
        self.specs = tuple(TensorSpec.of(array) for array in template)
        self.nbytes = sum(spec.nbytes for spec in self.specs)
        self._name = algorithm.name
        self._kept: dict[int, tuple[np.ndarray, ...]] = {}
        self._pending: dict[Peer, tuple[np.ndarray, ...]] = {}

    def check(self, specs: tuple[TensorSpec, ...]) -> None:
        """Refuse a state message whose arrays are not the rule's, before they are read.

        Raises:
            RemoteProtocolError: naming what the rule's state is.
        """
        if not self.specs:
            raise RemoteProtocolError(f"algorithm {self._name!r} keeps no worker state")
        if specs != self.specs:
            got = [spec.to_wire() for spec in specs][:3]
            wanted = [spec.to_wire() for spec in self.specs][:3]
            raise RemoteProtocolError(
                f"the worker state of algorithm {self._name!r} is {wanted}, got {got}"
            )

    def hold(self, peer: Peer, arrays: tuple[np.ndarray, ...]) -> None:
        """The state ``peer``'s next commit leaves its rule in (kept if it is accepted)."""
        self._pending[peer] = arrays

    def accepted(self, peer: Peer, worker: int) -> None:
        """``peer``'s commit was accepted: its held state becomes the worker's."""
        arrays = self._pending.pop(peer, None)
        if arrays is not None:
            self._kept[worker] = arrays

    def discard(self, peer: Peer) -> None:
        """Drop what ``peer`` held (its commit was a resend, or it closed)."""
        self._pending.pop(peer, None)

    def kept(self, worker: int) -> tuple[np.ndarray, ...] | None:
        """The worker's state at its last accepted commit, if its rule sent one."""
        return self._kept.get(worker)

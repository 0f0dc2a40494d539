"""Synchronous rounds: every live worker's commit, gathered, then applied at once.

A round completes when every live worker has committed (a worker that said goodbye is no
longer live, so the last rounds average the workers still training). A round that waits
longer than the round timeout fails the run, naming the workers that did not commit. The
round owns its members' receive buffers until it hands them over complete, or releases them
when it is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from distkeras_async.errors import RemoteProtocolError
from distkeras_async.server.update import Update


class Rounds:
    """The current synchronous round.

    Args:
        num_workers: workers in the run (all live at first).
        timeout: seconds a round may wait for its last worker.
        loop: the server's event loop (for the timer).
        on_complete: called with the round's updates, in worker order, when it completes;
            it owns them from then on.
        on_timeout: called with a reason when a round times out.
    """

    def __init__(
        self,
        num_workers: int,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
        on_complete: Callable[[Sequence[Update]], None],
        on_timeout: Callable[[str], None],
    ) -> None:
        self.live: set[int] = set(range(num_workers))
        self.completed = 0
        self._timeout = timeout
        self._loop = loop
        self._on_complete = on_complete
        self._on_timeout = on_timeout
        self._members: dict[int, Update] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        """Workers whose commit waits in the current round."""
        return len(self._members)

    def join(self, update: Update) -> None:
        """Add a worker's commit; the round owns it from now on.

        Raises:
            RemoteProtocolError: if that worker already committed in this round (the caller
                still owns ``update``).
        """
        worker = update.message.worker
        if worker in self._members:
            raise RemoteProtocolError(f"worker {worker} committed twice in one synchronous round")
        self._members[worker] = update
        if self._timer is None:
            self._timer = self._loop.call_later(self._timeout, self._timed_out)
        self._maybe_complete()

    def leave(self, worker: int) -> None:
        """A worker finished: the rounds stop waiting for it."""
        self.live.discard(worker)
        self._maybe_complete()

    def cancel(self) -> None:
        """Drop the current round, releasing its members' buffers."""
        self._stop_timer()
        members, self._members = self._members, {}
        for update in members.values():
            update.release()

    def _maybe_complete(self) -> None:
        if self._members and self.live <= set(self._members):
            self._stop_timer()
            members, self._members = self._members, {}
            self.completed += 1
            self._on_complete([members[w] for w in sorted(members)])

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        missing = sorted(self.live - set(self._members))
        self._on_timeout(
            f"synchronous round {self.completed + 1} timed out after {self._timeout:g} s: "
            f"worker(s) {missing} did not commit (committed: {sorted(self._members)})"
        )

"""Overlapped exchange: an asynchronous worker's commits and pulls run in a background thread.

Without overlap a worker stops at every exchange until the server's reply arrives. With it,
:class:`OverlappedClient` hands the exchange to a background thread and answers the rule at
once with the center of the *previous* exchange, so the next local steps run while the
update travels; the reply is adopted at the following exchange. The staleness this adds is
bounded by one communication window:

* delta rules (DOWNPOUR, ADAG, DynSGD): ``commit_pull`` returns the center that followed the
  previous commit. The worker continues from it, so its own latest window is in the center
  but not yet in its weights; its next delta counts only the steps taken since, so no step
  is committed twice or lost;
* elastic rules (asynchronous EASGD, EAMSGD): ``pull`` returns the center fetched right after
  the previous commit, one window old; the elastic step is taken against it.

Every request keeps its order (one exchange is in flight at a time, and a report waits for
it), step records and progress ride on the commit that follows them, and an error of the
background exchange is raised by the worker's next call. Synchronous rules cannot overlap:
their rounds need every worker's current weights.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from distkeras_async.algorithm import State, flatten_state
from distkeras_async.layout import FLAT_DTYPE, Layout
from distkeras_async.wire.messages import Control
from distkeras_async.worker.protocols import Connection, Record


class OverlappedClient:
    """An :class:`~distkeras_async.worker.protocols.ExchangeClient` exchanging in the background.

    Use it as a context manager inside the real client's: leaving it waits for the
    exchange in flight, so the client says goodbye (or reports an error) after it.

    Args:
        client: the worker's connection (one server or its shards).
    """

    def __init__(self, client: Connection) -> None:
        self.client = client
        size = client.layout.size
        # The latest center the background thread received, and the one it receives next.
        self._latest: np.ndarray | None = None
        self._next = np.empty(size, FLAT_DTYPE)
        # The versions (per shard) of those centers, and of the one the rule was given
        # last: the next commit was computed from it (the server measures staleness so).
        self._latest_versions: tuple[int, ...] = ()
        self._next_versions: tuple[int, ...] = ()
        self._given: tuple[int, ...] | None = None
        # The update in flight: the rule may reuse its own array at once.
        self._sending = np.empty(size, FLAT_DTYPE)
        # Progress for the next commit, kept here while an exchange is in flight.
        self.steps: int | None = None
        self.history: list[Record] = []
        # The rule's state after each commit: copied when the rule commits, since the rule
        # goes on changing it while the commit travels.
        self.state_source: Callable[[], State] | None = None
        self._job: threading.Thread | None = None
        self._error: BaseException | None = None
        self.exchanges_overlapped = 0

    # -- the connection's, read through (they change only when an exchange completes) ------

    @property
    def layout(self) -> Layout:
        """The layout of the center the server holds."""
        return self.client.layout

    @property
    def worker_id(self) -> int:
        """This worker's id."""
        return self.client.worker_id

    @property
    def attempt(self) -> int:
        """The Spark task attempt number."""
        return self.client.attempt

    @property
    def progress(self) -> int:
        """Local steps of this worker the server had applied when it connected."""
        return self.client.progress

    @property
    def carries_state(self) -> bool:
        """Whether the connection beneath carries a rule's state."""
        return self.client.carries_state

    @property
    def restored_state(self) -> tuple[np.ndarray, ...] | None:
        """The rule's state the server sent this attempt to resume with."""
        return self.client.restored_state

    @property
    def control(self) -> Control:
        """The driver's requests, from the latest reply the background thread received."""
        return self.client.control

    # -- ServerHandle ------------------------------------------------------------------

    def pull(self, out: np.ndarray | None = None) -> np.ndarray:
        """The latest center received (fetched now only if none was yet)."""
        self.wait()
        latest = self._fetch_if_none()
        self._given = self._latest_versions
        if out is None:
            return latest.copy()
        np.copyto(out, latest)
        return out

    def _fetch_if_none(self) -> np.ndarray:
        if self._latest is None:
            self._latest = self.client.pull()
            self._latest_versions = self.client.versions
        return self._latest

    def commit(self, update: np.ndarray) -> None:
        """Send ``update`` in the background, then fetch the center there for :meth:`pull`."""
        self._prepare(update)

        def exchange() -> None:
            self.client.commit(self._sending)
            self.client.pull(out=self._next)
            self._next_versions = self.client.versions

        self._launch(exchange)

    def commit_pull(self, update: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Send ``update`` in the background; return the center of the previous exchange."""
        self._prepare(update)
        latest = self._fetch_if_none()  # no pull before: the center as it is now
        if out is None:
            out = latest.copy()
        else:
            np.copyto(out, latest)

        def exchange() -> None:
            self.client.commit_pull(self._sending, out=self._next)
            self._next_versions = self.client.versions

        self._launch(exchange)
        self._given = self._latest_versions
        return out

    # -- everything else waits for the exchange in flight --------------------------------

    def report(
        self,
        metrics: Mapping[str, float],
        history: Sequence[Record] = (),
        *,
        epoch: int | None = None,
    ) -> None:
        """Report after the exchange in flight (so an epoch's report follows its commit)."""
        self.wait()
        self.client.report(metrics, history, epoch=epoch)

    def wait(self) -> None:
        """Wait for the exchange in flight; raise its error, if it failed."""
        job, self._job = self._job, None
        if job is not None:
            job.join()
            if self._error is None:
                spare = self._latest if self._latest is not None else np.empty_like(self._next)
                self._latest, self._next = self._next, spare
                self._latest_versions = self._next_versions
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> OverlappedClient:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            self.wait()  # the last commit's error, if any, is the worker's
            return
        # Already failing: let the exchange in flight end, keep the first error.
        job = self._job
        if job is not None:
            job.join()

    # -- plumbing ----------------------------------------------------------------------

    def _prepare(self, update: np.ndarray) -> None:
        """Wait for the exchange in flight, then take ``update`` and the progress to send."""
        self.wait()
        np.copyto(self._sending, update)
        # The progress and step records since the previous commit ride on this one.
        self.client.steps = self.steps
        self.client.history.extend(self.history)
        self.history = []
        # The update was computed from the center the rule was given last.
        self.client.bases = self._given
        if self.state_source is not None:
            snapshot = tuple(array.copy() for array in flatten_state(self.state_source()))
            self.client.state_source = lambda: snapshot

    def _launch(self, exchange: Callable[[], None]) -> None:
        def run() -> None:
            try:
                exchange()
            except BaseException as exc:  # raised by the worker's next call
                self._error = exc

        self._job = threading.Thread(target=run, name="distkeras-exchange", daemon=True)
        self._job.start()
        self.exchanges_overlapped += 1

"""The parameter server's shared state: the center, the workers, the rules, the failure.

Everything here runs on the server's one event loop, so neither the rules nor the counters
need locks. Connections reach it through a narrow interface (the session calls
:meth:`ServerCore.welcome`, :meth:`~ServerCore.pull`, :meth:`~ServerCore.commit`, ...) and it
answers them through another (:class:`Peer`): the core never reads or writes a
connection's fields, and imports no connection code.

The center changes in one place, ``_publish``: the rule computes the next center into a
spare buffer, which is published only if the rule returned and the result is finite. A rule
that raises fails the run (every worker is told at once, with the rule's traceback); a
commit that would make the center non-finite is refused. Either way the published center is
exactly what it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distkeras_async.algorithm import Algorithm, UpdateMeta
from distkeras_async.errors import (
    AuthenticationError,
    BadUpdateError,
    ErrorCode,
    LimitExceededError,
    RemoteProtocolError,
)
from distkeras_async.layout import Layout
from distkeras_async.server.buffers import BufferPool, CenterStore, Lease
from distkeras_async.server.checkpoint import Checkpointer
from distkeras_async.server.limits import Limits
from distkeras_async.server.rounds import Rounds
from distkeras_async.server.stats import ServerStats
from distkeras_async.server.update import Peer, Update, all_finite
from distkeras_async.wire import auth
from distkeras_async.wire.messages import Ack, Commit, CommitPull, Hello, Welcome

logger = logging.getLogger("distkeras_async.server")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the run failed: a code for machines and a reason (with a traceback) for people."""

    code: ErrorCode
    reason: str


class ServerCore:
    """Center, workers, rounds and counters of one parameter server."""

    def __init__(
        self,
        center: np.ndarray,
        layout: Layout,
        algorithm: Algorithm,
        num_workers: int,
        secret: bytes,
        limits: Limits,
        loop: asyncio.AbstractEventLoop,
        *,
        version: int = 0,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.layout = layout
        self.algorithm = algorithm
        self.num_workers = num_workers
        self.limits = limits
        self.loop = loop
        self._secret = secret
        self.center = CenterStore(center, limits.center_buffers, loop.call_soon)
        self.receive = BufferPool(layout.size, limits.receive_buffers, loop.call_soon)
        self.stats = ServerStats(version=version)
        self.version = version
        self.checkpointer = checkpointer
        self.failure: Failure | None = None
        self.peers: set[Peer] = set()
        self._active: dict[int, Peer] = {}
        self._latest_attempt: dict[int, int] = {}
        self._last_seq: dict[tuple[int, int], int] = {}
        # Updates (and completed rounds) waiting for a spare center buffer, applied in order.
        self._queue: deque[Callable[[Lease], None]] = deque()
        self._queued_updates: set[Update] = set()
        self._waiting_for_center = False
        self.rounds = Rounds(
            num_workers, limits.round_timeout, loop, self._round_complete, self._round_failed
        )

    # -- connections -------------------------------------------------------------------

    def admit(self, peer: Peer) -> None:
        """Admit a new connection.

        Raises:
            LimitExceededError: when the server is full.
        """
        self.stats.connections_total += 1
        if len(self.peers) >= self.limits.max_connections:
            raise LimitExceededError(f"too many connections (limit {self.limits.max_connections})")
        self.peers.add(peer)
        self.stats.connections = len(self.peers)

    def forget(self, peer: Peer, *, said_bye: bool) -> None:
        """A connection closed; a synchronous worker that left without goodbye fails the run."""
        self.peers.discard(peer)
        self.stats.connections = len(self.peers)
        worker = peer.worker
        if worker is None or self._active.get(worker) is not peer:
            return
        del self._active[worker]
        if self.algorithm.synchronous and worker in self.rounds.live and not said_bye:
            self.fail_run(
                ErrorCode.ROUND_FAILED,
                f"worker {worker} disconnected during synchronous training without finishing "
                "(its task failed or was killed)",
            )

    def sweep(self) -> None:
        """Write a due checkpoint and close connections whose timeouts expired."""
        self.maybe_checkpoint()
        now = time.monotonic()
        for peer in list(self.peers):
            peer.sweep(now, self.limits)

    # -- requests (the session calls these) --------------------------------------------

    def welcome(self, peer: Peer, hello: Hello, server_nonce: bytes) -> Welcome:
        """Check a hello and register the worker's connection; the welcome to send back.

        Raises:
            AuthenticationError: if the proof is wrong.
            RemoteProtocolError: if the worker may not connect now (the message says why).
        """
        self._refuse_if_failed()
        worker, attempt = hello.worker, hello.attempt
        expected = auth.client_proof(self._secret, server_nonce, worker, attempt)
        if not auth.verify(expected, hello.proof):
            raise AuthenticationError("authentication failed")
        if worker >= self.num_workers:
            raise RemoteProtocolError(
                f"worker id {worker} out of range (num_workers={self.num_workers})"
            )
        latest = self._latest_attempt.get(worker, -1)
        if attempt < latest:
            raise RemoteProtocolError(
                f"worker {worker} attempt {attempt} is stale: attempt {latest} has connected"
            )
        previous = self._active.get(worker)
        if self.algorithm.synchronous:
            if worker not in self.rounds.live:
                raise RemoteProtocolError(f"worker {worker} already finished this run")
            if previous is not None:
                raise RemoteProtocolError(f"worker {worker} is already connected")
        elif previous is not None:
            # An asynchronous task retried by Spark replaces its predecessor's connection.
            previous.fail(ErrorCode.PROTOCOL, f"replaced by a newer connection of worker {worker}")
        self._latest_attempt[worker] = attempt
        self._active[worker] = peer
        stats = self.stats.worker(worker)
        stats.attempt, stats.last_seen = attempt, time.time()
        return Welcome(
            auth.server_proof(self._secret, hello.nonce, server_nonce),
            self.layout.specs,
            self.algorithm.name,
            self.algorithm.settings,
            self.version,
            self.num_workers,
            self.algorithm.synchronous,
            # A new client of the same worker and attempt continues the numbering, so its
            # commits are not mistaken for resends of its predecessor's.
            self._last_seq.get((worker, attempt), -1) + 1,
            self.limits.round_timeout,
        )

    def seen(self, worker: int) -> None:
        """A request from ``worker`` arrived (for the statistics); refuse if the run failed."""
        self._refuse_if_failed()
        self.stats.worker(worker).last_seen = time.time()

    def pull(self, peer: Peer, worker: int) -> None:
        """Reply with the current center."""
        self._send_center(peer, worker)

    def report(self, peer: Peer, worker: int, metrics: dict[str, float]) -> None:
        """Record a worker's metrics and acknowledge them."""
        stats = self.stats.worker(worker)
        stats.last_metrics = dict(metrics)
        stats.reports += 1
        peer.send(Ack(self.version))

    def bye(self, worker: int) -> None:
        """A worker finished; a synchronous run stops waiting for it."""
        self.stats.worker(worker).finished = True
        if self.algorithm.synchronous:
            self.rounds.leave(worker)

    def worker_failed(self, worker: int, message: str) -> None:
        """A worker reports that it failed: a synchronous run fails with it."""
        reason = f"worker {worker} reported an error: {message}"
        if self.algorithm.synchronous:
            self.fail_run(ErrorCode.WORKER_FAILED, reason)
        else:
            logger.error(reason)

    def commit(self, peer: Peer, message: Commit, lease: Lease, pulled_version: int) -> None:
        """Take a commit whose payload arrived whole; ``lease`` (its buffer) becomes ours.

        It is applied now, queued until a center buffer frees up, or joins the synchronous
        round; the reply follows when it was applied.

        Raises:
            BadUpdateError: if a synchronous update is not finite (the center is unchanged).
            RemoteProtocolError: if a worker commits twice in one round.
        """
        with lease:  # released on every path unless handed to an Update below
            key = (message.worker, message.attempt)
            if message.seq <= self._last_seq.get(key, -1):
                self.stats.worker(message.worker).duplicates += 1
                self._reply(peer, message, duplicate=True)
                return
            # Synchronous updates are checked on arrival, so the error names the worker,
            # not the whole round.
            if (
                self.algorithm.synchronous
                and not self.algorithm.allow_nonfinite
                and not all_finite(message.update)
            ):
                raise BadUpdateError("update contains NaN or infinity; the center was not changed")
            self._last_seq[key] = message.seq
            update = Update(peer, message, lease.take(), pulled_version)
        if self.algorithm.synchronous:
            try:
                self.rounds.join(update)
            except BaseException:
                update.release()
                raise
        else:
            self._queued_updates.add(update)
            self._enqueue(lambda spare: self._apply_async(update, spare))

    # -- applying ----------------------------------------------------------------------

    def _enqueue(self, operation: Callable[[Lease], None]) -> None:
        self._queue.append(operation)
        self._drain()

    def _drain(self) -> None:
        """Run queued operations in order while spare center buffers are available."""
        self._waiting_for_center = False
        while self._queue and self.failure is None:
            spare = self.center.spare()
            if spare is None:
                if not self._waiting_for_center:
                    self._waiting_for_center = True
                    self.center.wait(self._drain)
                return
            operation = self._queue.popleft()
            with spare:  # published by the operation, or released here
                operation(spare)

    def _apply_async(self, update: Update, spare: Lease) -> None:
        try:
            meta = update.meta(self.version)
            center = self.center.array
            if not self._run_rule(
                "server_apply",
                lambda: self.algorithm.apply_update(
                    spare.array, center, update.message.update, meta
                ),
            ):
                return
            if not self.algorithm.allow_nonfinite and not all_finite(spare.array):
                reason = (
                    "update contains NaN or infinity"
                    if not all_finite(update.message.update)
                    else "applying this update would make the center non-finite (overflow)"
                )
                update.peer.fail(ErrorCode.BAD_UPDATE, f"{reason}; the center was not changed")
                return
            self._publish(spare, [meta])
            self._reply(update.peer, update.message)
        finally:
            update.release()
            self._queued_updates.discard(update)

    def _round_complete(self, members: Sequence[Update]) -> None:
        self._enqueue(lambda spare: self._apply_round(members, spare))

    def _apply_round(self, members: Sequence[Update], spare: Lease) -> None:
        try:
            metas = [m.meta(self.version) for m in members]
            center = self.center.array
            updates = [m.message.update for m in members]
            if not self._run_rule(
                "server_apply_round",
                lambda: self.algorithm.apply_round(spare.array, center, updates, metas),
            ):
                return
            if not self.algorithm.allow_nonfinite and not all_finite(spare.array):
                self.fail_run(
                    ErrorCode.ROUND_FAILED,
                    f"synchronous round {self.stats.rounds + 1} would make the center "
                    "non-finite (overflow); the center was not changed",
                )
                return
            self._publish(spare, metas)
            self.stats.rounds += 1
            for m in members:
                self._reply(m.peer, m.message)
        finally:
            for m in members:
                m.release()

    def _run_rule(self, rule: str, call: Callable[[], None]) -> bool:
        """Run an algorithm's rule; on any exception fail the run with its traceback."""
        try:
            # Overflow is found by the finiteness check of the result, not by warnings.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                call()
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            self.fail_run(
                ErrorCode.RULE_FAILED,
                f"algorithm {self.algorithm.name!r}: {rule} raised "
                f"{type(exc).__name__}: {exc}; the center was not changed\n{trace}",
            )
            return False
        return True

    def _publish(self, spare: Lease, metas: Sequence[UpdateMeta]) -> None:
        self.center.publish(spare)
        for meta in metas:
            self._count_commit(meta)
        self.version += 1
        self.stats.version = self.version
        self.maybe_checkpoint()

    def _count_commit(self, meta: UpdateMeta) -> None:
        self.stats.commits += 1
        stats = self.stats.worker(meta.worker)
        stats.commits += 1
        stats.staleness_last = meta.staleness
        stats.staleness_max = max(stats.staleness_max, meta.staleness)
        stats.staleness_total += meta.staleness

    def _reply(self, peer: Peer, message: Commit, duplicate: bool = False) -> None:
        if isinstance(message, CommitPull):
            self._send_center(peer, message.worker, duplicate)
        else:
            peer.send(Ack(self.version, duplicate))

    def _send_center(self, peer: Peer, worker: int, duplicate: bool = False) -> None:
        self.stats.worker(worker).pulls += 1
        peer.send_center(self.center.current, self.version, duplicate=duplicate)

    def maybe_checkpoint(self) -> None:
        """Start writing a checkpoint if one is due (a copy of the center, in a thread)."""
        checkpointer = self.checkpointer
        if checkpointer is None or not checkpointer.due(self.version, time.monotonic()):
            return
        checkpointer.start(self.version, time.monotonic())
        self.loop.run_in_executor(None, checkpointer.write, self.center.array.copy(), self.version)

    # -- failing the run ---------------------------------------------------------------

    def _round_failed(self, reason: str) -> None:
        self.fail_run(ErrorCode.ROUND_FAILED, reason)

    def _refuse_if_failed(self) -> None:
        if self.failure is not None:
            raise _RunFailedError(self.failure)

    def fail_run(self, code: ErrorCode, reason: str) -> None:
        """Fail the run: every worker gets ``reason`` at once and no update is applied any more.

        Every buffer a pending commit holds is released here: queued updates and the
        current round.
        """
        if self.failure is not None:
            return
        logger.error("parameter server failed: %s", reason)
        self.failure = Failure(code, reason)
        self.rounds.cancel()
        self._queue.clear()
        for update in self._queued_updates:
            update.release()
        self._queued_updates.clear()
        for peer in list(self.peers):
            peer.fail(code, reason)


class _RunFailedError(RemoteProtocolError):
    """A request reached a server whose run already failed (carries the run's failure)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.code = failure.code

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
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distkeras_async.algorithm import Algorithm, UpdateMeta, flatten_state, unflatten_state
from distkeras_async.errors import (
    AuthenticationError,
    BadUpdateError,
    ErrorCode,
    LimitExceededError,
    RemoteProtocolError,
    RunEndedError,
)
from distkeras_async.layout import Layout
from distkeras_async.options.values import REPLY_MARGIN
from distkeras_async.server.apply import CenterUpdater, describe_failure, finite_norm
from distkeras_async.server.buffers import BufferPool, CenterStore, Lease
from distkeras_async.server.checkpoint import Checkpointer
from distkeras_async.server.epochs import EpochCenters
from distkeras_async.server.limits import Limits
from distkeras_async.server.rounds import Rounds
from distkeras_async.server.rule_states import WorkerStates
from distkeras_async.server.stats import ServerStats
from distkeras_async.server.update import Peer, StepRecord, Update
from distkeras_async.wire import auth, compression
from distkeras_async.wire.frames import Frame
from distkeras_async.wire.messages import (
    NO_CONTROL,
    Ack,
    Commit,
    CommitPull,
    Control,
    Hello,
    Report,
    Welcome,
)

logger = logging.getLogger("distkeras_async.server")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the run failed: a code for machines and a reason (with a traceback) for people."""

    code: ErrorCode
    reason: str
    # When it failed: a sharded server reports the shard that failed first.
    at: float = dataclasses.field(default_factory=time.time, compare=False)


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
        shard: tuple[int, int] | None = None,
        rule_state: tuple[np.ndarray, ...] = (),
    ) -> None:
        self.layout = layout
        self.shard = shard
        self.algorithm = algorithm
        self.num_workers = num_workers
        self.limits = limits
        self.loop = loop
        self._secret = secret
        self.center = CenterStore(center, limits.center_buffers, loop.call_soon)
        self.receive = BufferPool(layout.size, limits.receive_buffers, loop.call_soon)
        # What a commit looks like on the wire: the algorithm's commit dtype decides.
        self.tensor_sizes = [spec.size for spec in layout.specs]
        self.commits = compression.CommitCodec(algorithm.commit_dtype, self.tensor_sizes)
        # What a center reply travels in after a connection's first (``wire/deltas.py``).
        self.pull_dtype: str = algorithm.pull_dtype
        self._change_scratch: np.ndarray | None = None
        self.stats = ServerStats(version=version)
        self.version = version
        self.checkpointer = checkpointer
        self.failure: Failure | None = None
        # The driver's requests to the workers (stop, a learning rate): on every reply.
        self.control: Control = NO_CONTROL
        # The center as each global epoch ended, until the driver's callbacks take it.
        self.epochs = EpochCenters()
        self.peers: set[Peer] = set()
        self._active: dict[int, Peer] = {}
        self._latest_attempt: dict[int, int] = {}
        self._last_seq: dict[tuple[int, int], int] = {}
        # Local steps of each worker applied (or queued to be) by any of its attempts: a
        # retried asynchronous task resumes after them.
        self.progress: dict[int, int] = {}
        # Every attempt's step records (from its reports), and the attempts that said bye:
        # the steps of an attempt that was killed stay in the run's history.
        self.step_records: dict[tuple[int, int], list[StepRecord]] = {}
        self.finished_attempts: set[tuple[int, int]] = set()
        algorithm.server_start(layout)
        if rule_state:  # checked against the rule's when the checkpoint was loaded
            algorithm.restore_server_state(unflatten_state(algorithm.server_state(), rule_state))
        self.worker_states = WorkerStates(algorithm, layout)
        self.updater = CenterUpdater(self.center, algorithm, self, lambda: self.version)
        self.rounds = Rounds(
            num_workers,
            limits.timeouts.round_timeout,
            loop,
            self._round_complete,
            self._round_failed,
        )
        # One shard of a synchronous run keeps the center of the last two versions: a round
        # that failed on another shard was never applied there, and the driver reads every
        # shard at the version they all reached (rounds stay all-or-nothing across shards).
        self.recent: dict[int, np.ndarray] = {}
        self._keep_recent = shard is not None and algorithm.synchronous
        if self._keep_recent:
            self.recent[version] = self.center.array.copy()

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
        self.worker_states.discard(peer)
        worker = peer.worker
        if worker is None or self._active.get(worker) is not peer:
            return
        del self._active[worker]
        stats = self.stats.worker(worker)
        stats.connected, stats.disconnected_at = False, time.time()
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
        stats.connected, stats.disconnected_at = True, 0.0
        resumes = not self.algorithm.synchronous
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
            self.reply_timeout,
            self.progress.get(worker, 0) if resumes else 0,
            self.shard,
            resumes and self.worker_states.kept(worker) is not None,
        )

    @property
    def reply_timeout(self) -> float:
        """Seconds the welcome tells a worker to wait for a commit's reply (0: no round)."""
        if not self.algorithm.synchronous:
            return 0.0
        return self.limits.timeouts.round_timeout + REPLY_MARGIN

    def seen(self, worker: int) -> None:
        """A request from ``worker`` arrived (for the statistics); refuse if the run failed."""
        self._refuse_if_failed()
        self.stats.worker(worker).last_seen = time.time()

    def pull(self, peer: Peer, worker: int) -> None:
        """Reply with the current center."""
        self._send_center(peer, worker)

    def report(self, peer: Peer, message: Report) -> None:
        """Record a worker's metrics and step records, and acknowledge them."""
        stats = self.stats.worker(message.worker)
        stats.last_metrics = dict(message.metrics)
        stats.reports += 1
        if message.epoch is not None:
            # A retried attempt re-announces, without logs, an epoch whose end it cannot
            # know was reported (its predecessor may have died between the two): keep logs.
            if message.metrics or message.epoch not in stats.epochs:
                stats.epochs[message.epoch] = dict(message.metrics)
            self._epochs_ended()
        if message.history:
            records = self.step_records.setdefault((message.worker, message.attempt), [])
            records.extend((i, t, dict(m)) for i, t, m in message.history)
        peer.send(Ack(self.version, control=self.control))

    def bye(self, worker: int, attempt: int) -> None:
        """A worker finished; a synchronous run stops waiting for it."""
        self.stats.worker(worker).finished = True
        self.finished_attempts.add((worker, attempt))
        # A finished attempt's steps come back with its task's result: keep only the others'.
        self.step_records.pop((worker, attempt), None)
        if self.algorithm.synchronous:
            self.rounds.leave(worker)
        self._epochs_ended()

    def _epochs_ended(self) -> None:
        self.epochs.update(self.stats, self.num_workers, self.center.array)

    def worker_failed(self, worker: int, message: str) -> None:
        """A worker reports that it failed: a synchronous run fails with it."""
        reason = f"worker {worker} reported an error: {message}"
        if self.algorithm.synchronous:
            self.fail_run(ErrorCode.WORKER_FAILED, reason)
        else:
            logger.error(reason)

    def change_scratch(self) -> np.ndarray:
        """The scratch every connection's reply encoder shares (they run on this loop)."""
        if self._change_scratch is None:
            self._change_scratch = np.empty(self.layout.size, np.float32)
        return self._change_scratch

    def payload_view(self, lease: Lease) -> memoryview:
        """Where a commit's payload lands: the float32 buffer, or its compressed twin."""
        return self.commits.payload_view(lease.buffer.view, lease.buffer.wire_view)

    def decoded(self, frame: Frame, lease: Lease) -> Frame:
        """``frame`` with its update as float32 in ``lease``'s buffer, so rules see float32."""
        return dataclasses.replace(frame, tensors=self.commits.decode(frame.tensors, lease.array))

    def commit(self, peer: Peer, message: Commit, lease: Lease, pulled_version: int) -> None:
        """Take a commit whose payload arrived whole; ``lease`` (its buffer) becomes ours.

        It is applied now or after the updates waiting before it, or joins the synchronous
        round; the reply follows when it was applied.

        Raises:
            BadUpdateError: if the update is not finite (the center is unchanged).
            RemoteProtocolError: if a worker commits twice in one round.
        """
        with lease:  # released on every path unless handed to an Update below
            key = (message.worker, message.attempt)
            if message.seq <= self._last_seq.get(key, -1):
                self.worker_states.discard(peer)
                self.stats.worker(message.worker).duplicates += 1
                self._reply(peer, message, duplicate=True)
                return
            norm = math.inf  # not measured when the algorithm allows non-finite updates
            if not self.algorithm.allow_nonfinite:
                measured = finite_norm(message.update)
                if measured is None:
                    raise BadUpdateError(
                        "update contains NaN or infinity; the center was not changed"
                    )
                norm = measured
            self._last_seq[key] = message.seq
            self.worker_states.accepted(peer, message.worker)
            if message.history:
                records = self.step_records.setdefault(key, [])
                records.extend((i, t, dict(m)) for i, t, m in message.history)
            if message.steps is not None and not self.algorithm.synchronous:
                # Recorded on acceptance, not on application: a queued update is applied
                # unless the run fails, so a retry that connects meanwhile must not redo it.
                self.progress[message.worker] = max(
                    self.progress.get(message.worker, 0), message.steps
                )
            update = Update(peer, message, lease.take(), pulled_version, norm)
        if self.algorithm.synchronous:
            try:
                self.rounds.join(update)
            except BaseException:
                update.release()
                raise
        else:
            self.updater.submit([update])

    def _round_complete(self, members: Sequence[Update]) -> None:
        self.updater.submit(members)

    # -- what the updater reports (its Outcome) ----------------------------------------

    def applied(self, members: Sequence[Update], metas: Sequence[UpdateMeta]) -> None:
        """The next center was published: count it, reply to its workers."""
        for meta in metas:
            self._count_commit(meta)
        self.version += 1
        self.stats.version = self.version
        if self.algorithm.synchronous:
            self.stats.rounds += 1
        if self._keep_recent:
            self.recent[self.version] = self.center.array.copy()
            self.recent.pop(self.version - 2, None)
        self.maybe_checkpoint()
        for m in members:
            self._reply(m.peer, m.message)

    def refused(self, members: Sequence[Update], reason: str) -> None:
        """The result would not be finite: refuse the commit (a round fails the run)."""
        if self.algorithm.synchronous:
            self.fail_run(
                ErrorCode.ROUND_FAILED,
                f"synchronous round {self.stats.rounds + 1}: {reason}; the center was not changed",
            )
        else:
            (update,) = members
            update.peer.fail(
                ErrorCode.BAD_UPDATE,
                f"applying this update: {reason}; the center was not changed",
            )

    def rule_failed(self, rule: str, error: Exception, in_place: bool) -> None:
        """The algorithm's rule raised: the run fails, with its traceback."""
        self.fail_run(
            ErrorCode.RULE_FAILED, describe_failure(self.algorithm, rule, error, in_place)
        )

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
            peer.send(Ack(self.version, duplicate, self.control))

    def _send_center(self, peer: Peer, worker: int, duplicate: bool = False) -> None:
        self.stats.worker(worker).pulls += 1
        peer.send_center(self.center.current, self.version, duplicate, self.control)

    def center_at(self, version: int) -> np.ndarray | None:
        """A copy of the center as it was at ``version``, or None if it is not kept.

        The current version always is; a shard of a synchronous run also keeps the one
        before.
        """
        if version == self.version:
            return self.center.array.copy()
        kept = self.recent.get(version)
        return None if kept is None else kept.copy()

    def maybe_checkpoint(self) -> None:
        """Start writing a checkpoint if one is due (a copy of the center, in a thread)."""
        checkpointer = self.checkpointer
        if checkpointer is None or not checkpointer.due(self.version, time.monotonic()):
            return
        checkpointer.start(self.version, time.monotonic())
        written = self.loop.run_in_executor(
            None, checkpointer.write, self.center.array.copy(), self.version, self.rule_state()
        )
        written.add_done_callback(lambda _: self._checkpoint_written(checkpointer))

    def rule_state(self) -> tuple[np.ndarray, ...]:
        """Copies of the server rule's state arrays, as a checkpoint keeps them."""
        return tuple(array.copy() for array in flatten_state(self.algorithm.server_state()))

    def _checkpoint_written(self, checkpointer: Checkpointer) -> None:
        reason = checkpointer.failed_for_good
        if reason is not None:
            self.fail_run(ErrorCode.CHECKPOINT_FAILED, reason)

    # -- failing the run ---------------------------------------------------------------

    def _round_failed(self, reason: str) -> None:
        self.fail_run(ErrorCode.ROUND_FAILED, reason)

    def _refuse_if_failed(self) -> None:
        if self.failure is not None:
            raise RunEndedError(self.failure.reason, self.failure.code)

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
        self.updater.cancel()
        for peer in list(self.peers):
            peer.fail(code, reason)

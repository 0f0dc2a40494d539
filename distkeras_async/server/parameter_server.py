"""The parameter server: an asyncio (uvloop) server in a background thread of the driver.

Usage::

    server = ParameterServer(model.get_weights(), "downpour", num_workers=4, secret=secret)
    port = server.start()          # bound; workers may connect now
    ...                            # workers train through ParameterServerClient
    weights = server.center        # the trained weights, as a list like get_weights()
    server.stop()                  # closes the listener and every connection, then returns

One event loop owns all the state (:mod:`distkeras_async.server.core`), so the update rules run
without locks; other threads read the center and the statistics through that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import math
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import ErrorCode
from distkeras_async.options import CheckpointOptions, Timeouts
from distkeras_async.server.core import Failure, ServerCore
from distkeras_async.server.limits import Capacity, Limits
from distkeras_async.server.run_setup import (
    FailureReporting,
    check_limits,
    prepare_run,
    sort_arguments,
    with_option_parameters,
)
from distkeras_async.server.session import Session
from distkeras_async.server.stats import ServerStats
from distkeras_async.server.transport import Transport
from distkeras_async.server.update import StepRecord
from distkeras_async.wire import auth
from distkeras_async.wire.messages import NO_CONTROL, Control

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, or a minimal install
    uvloop = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How often idle, half-sent and unread connections are looked for. One sweep is a loop over
# the open connections, so once a second costs nothing and bounds every timeout's slack.
SWEEP_INTERVAL = 1.0


class ParameterServer(FailureReporting):
    """Holds the center variable and applies an algorithm's server rule to workers' commits.

    The timeouts, the checkpoint settings and the capacity are option groups
    (:class:`~distkeras_async.options.Timeouts`,
    :class:`~distkeras_async.options.CheckpointOptions`,
    :class:`~distkeras_async.server.limits.Capacity`): pass a group whole, or its options
    flat (``round_timeout=1.0``, ``checkpoint_path=...``, ``max_connections=4``), not both.
    ``inspect.signature(ParameterServer)`` lists every flat option with its default.

    Args:
        weights: the initial weights, as ``keras_model.get_weights()`` returns them.
        algorithm: a registered algorithm name, an Algorithm class, or an instance.
        num_workers: how many workers train (worker ids are ``0 .. num_workers-1``).
        secret: this run's shared secret (at least 16 random bytes), see :mod:`auth`.
        host: the address to listen on; the address the workers use to reach the driver.
        port: the port to listen on; 0 lets the OS choose (see :attr:`port`).
        ssl_context: a server-side TLS context, or None for plain TCP.
        timeouts: how long a round, a silent connection, a frame, a handshake and an unread
            reply may take (default: each option's declared default; the idle timeout must
            stay above a communication window's duration).
        checkpoints: where and how often the center is written (``checkpoint_path``,
            ``checkpoint_every`` updates, ``checkpoint_interval`` seconds); flat, a path
            needs a period; ``snapshot_interval`` is the trainer's and is not taken.
        capacity: open connections and model-sized buffers allowed.
        use_uvloop: use uvloop when it is installed.
        resume_from: start from this checkpoint's center and version instead of ``weights``
            (which must have the same layout).
        shard: ``(index, count)`` when this server is one shard of a sharded center (a
            process of :class:`~distkeras_async.server.sharded.ShardedParameterServer`);
            ``weights`` are then the shard's pieces.
        version: the center's version at start (a shard resumed from a checkpoint).
        **keywords: the groups' options, flat; the rest are the algorithm's hyperparameters
            when ``algorithm`` is a name/class.

    Raises:
        TypeError: for a group given together with one of its flat options.
        ValueError: for a bad value, naming the argument.
    """

    @with_option_parameters
    def __init__(
        self,
        weights: Sequence[np.ndarray] | np.ndarray,
        algorithm: str | type[Algorithm] | Algorithm,
        *,
        num_workers: int,
        secret: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        timeouts: Timeouts | None = None,
        checkpoints: CheckpointOptions | None = None,
        capacity: Capacity | None = None,
        use_uvloop: bool = True,
        resume_from: str | os.PathLike[str] | None = None,
        shard: tuple[int, int] | None = None,
        version: int = 0,
        **keywords: Any,
    ) -> None:
        check_limits(num_workers=num_workers, port=port)
        options = sort_arguments(
            keywords, timeouts=timeouts, checkpoints=checkpoints, capacity=capacity
        )
        setup = prepare_run(
            weights,
            algorithm,
            options.hyperparameters,
            num_workers=num_workers,
            checkpoints=options.checkpoints,
            version=version,
            resume_from=resume_from,
        )
        self.algorithm, self.layout = setup.algorithm, setup.layout
        self._initial, self._initial_version = setup.initial, setup.initial_version
        self._rule_state = setup.rule_state
        self.checkpointer = setup.checkpointer
        self.shard = shard
        self.num_workers = num_workers
        self.host = host
        self._requested_port = port
        self._secret = auth.check_secret(secret)
        self._ssl = ssl_context
        self.limits = Limits.settle(
            options.timeouts, options.capacity, num_workers, self.algorithm.synchronous
        )
        self._use_uvloop = use_uvloop and uvloop is not None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._state: ServerCore | None = None
        self._server: asyncio.AbstractServer | None = None
        self._loop_thread_id: int | None = None
        self.port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> int:
        """Bind, start serving in a background thread, and return the bound port.

        Raises:
            OSError: if the address cannot be bound (the message names host and port).
            RuntimeError: if the server was already started.
        """
        if self._thread is not None:
            raise RuntimeError("the parameter server was already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="distkeras-parameter-server", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        assert self.port is not None
        logger.info(
            "parameter server (%s, %d workers) listening on %s:%d",
            self.algorithm.name,
            self.num_workers,
            self.host,
            self.port,
        )
        return self.port

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = uvloop.new_event_loop() if self._use_uvloop else asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        asyncio.set_event_loop(loop)
        try:
            # The state adopts `_initial` as its first center buffer (no copy of the model);
            # the server reads `_initial` itself only while no state exists.
            state = ServerCore(
                self._initial,
                self.layout,
                self.algorithm,
                self.num_workers,
                self._secret,
                self.limits,
                loop,
                version=self._initial_version,
                checkpointer=self.checkpointer,
                shard=self.shard,
                rule_state=self._rule_state,
            )
            self._state = state
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: Transport(lambda link: Session(state, link, loop.call_soon)),
                        self.host,
                        self._requested_port,
                        ssl=self._ssl,
                    )
                )
            except OSError as exc:
                reason = "already in use" if exc.errno == errno.EADDRINUSE else str(exc)
                raise OSError(
                    exc.errno, f"cannot listen on {self.host}:{self._requested_port}: {reason}"
                ) from exc
            self.port = self._server.sockets[0].getsockname()[1]
            loop.call_later(SWEEP_INTERVAL, self._sweep)
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            self._close_everything(loop)

    def _sweep(self) -> None:
        assert self._state is not None and self._loop is not None
        self._state.sweep()
        self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _close_everything(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._server is not None:
            self._server.close()
        if self._state is not None:
            for peer in list(self._state.peers):
                peer.abort()
        # Let connection_lost callbacks and the listener's close run before the loop closes,
        # and wait for a checkpoint being written (the default executor's threads).
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, stop the thread, and return.

        Idempotent. The port is free when this returns.
        """
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():  # pragma: no cover - would be a bug; never hang the caller
            logger.error("parameter server thread did not stop within %gs", timeout)

    def __enter__(self) -> ParameterServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def ports(self) -> tuple[int, ...]:
        """The bound port as a one-element tuple (a sharded server has one per shard)."""
        if self.port is None:
            raise RuntimeError("the parameter server has not been started")
        return (self.port,)

    @property
    def running(self) -> bool:
        """Whether the server serves: its thread is alive and has built its state (readable)."""
        return self._thread is not None and self._thread.is_alive() and self._state is not None

    # -- reading the state from other threads ------------------------------------------

    def _call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the server's loop (or directly when the loop is not running)."""
        loop = self._loop
        if (
            loop is None
            or not self.running
            or loop.is_closed()
            or threading.get_ident() == self._loop_thread_id
        ):
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # stopped in between
            return fn()
        return future.result(timeout)

    def _require_state(self) -> ServerCore:
        if self._state is None:
            raise RuntimeError("the parameter server has not been started")
        return self._state

    @property
    def center_flat(self) -> np.ndarray:
        """A copy of the center as one flat float32 vector."""
        if self._state is None:
            return self._initial.copy()
        state = self._state

        def copy() -> np.ndarray:
            return state.center.array.copy()

        return self._call(copy)

    @property
    def center(self) -> list[np.ndarray]:
        """A copy of the center as a weight list (``keras_model.set_weights`` accepts it)."""
        return self.layout.unflatten(self.center_flat)

    def _snapshot(self) -> tuple[np.ndarray, int]:
        center, version, _ = self._snapshot_with_rule_state()
        return center, version

    def _snapshot_with_rule_state(self) -> tuple[np.ndarray, int, tuple[np.ndarray, ...]]:
        state = self._state

        def snapshot() -> tuple[np.ndarray, int, tuple[np.ndarray, ...]]:
            if state is None:
                return self._initial.copy(), self._initial_version, self._rule_state
            return state.center.array.copy(), state.version, state.rule_state()

        return self._call(snapshot)

    def center_at(self, version: int) -> np.ndarray | None:
        """A copy of the flat center at ``version``, or None if it is not kept.

        The current version is always kept; one shard of a synchronous run also keeps the
        version before, so a sharded read sees every shard at the same round.
        """
        state = self._require_state()
        return self._call(lambda: state.center_at(version))

    def fail(self, code: ErrorCode, reason: str) -> None:
        """Fail the run now: every worker is told ``reason``, no update is applied any more."""
        state = self._require_state()
        self._call(lambda: state.fail_run(code, reason))

    @property
    def failure_time(self) -> float | None:
        """``time.time()`` when the run failed, or None."""
        failure = self._failure()
        return None if failure is None else failure.at

    @property
    def version(self) -> int:
        """Number of updates applied (a synchronous round counts once)."""
        return self._state.version if self._state is not None else self._initial_version

    def stats(self) -> ServerStats:
        """A consistent snapshot of the server's statistics."""
        state = self._require_state()

        def snap() -> ServerStats:
            state.stats.center_buffers = state.center.buffers
            state.stats.receive_buffers = state.receive.created
            state.stats.round_waiting = state.rounds.waiting
            state.stats.center_buffers_in_use = state.center.in_use
            state.stats.receive_buffers_in_use = state.receive.in_use
            state.stats.in_place_updates = state.updater.in_place
            return state.stats.snapshot()

        return self._call(snap)

    def unfinished_attempts(
        self,
    ) -> dict[tuple[int, int], list[tuple[int, float, dict[str, float]]]]:
        """The step records of every attempt that never said goodbye (killed, lost).

        Keyed by ``(worker, attempt)``; each record is ``(iteration, timestamp, metrics)`` as
        the worker reported it (the last half second before an attempt died may be missing).
        """
        state = self._require_state()

        def collect() -> dict[tuple[int, int], list[StepRecord]]:
            return {
                key: list(records)
                for key, records in state.step_records.items()
                if key not in state.finished_attempts
            }

        return self._call(collect)

    def request(self, *, stop: bool | None = None, learning_rate: float | None = None) -> None:
        """Ask every worker, on its next reply from the server, to stop or to change its rate.

        Each reply to a worker (center or acknowledgement) carries the request from then on;
        a worker acts on it after its next exchange. ``None`` leaves a setting as it is.
        """
        state = self._require_state()
        if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate}")
        self._call(lambda: setattr(state, "control", state.control.changed(stop, learning_rate)))

    def keep_epoch_centers(self) -> None:
        """Keep a copy of the center as each global epoch ends, from now on.

        The driver's callbacks ask for it, and take each with :meth:`take_epoch_center`.
        """
        state = self._require_state()
        self._call(lambda: setattr(state.epochs, "keep", True))

    def take_epoch_center(self, epoch: int) -> list[np.ndarray] | None:
        """The center as global ``epoch`` ended (a weight list), once; None if not kept.

        Every worker's epoch-end report arrived after its commit of that epoch was applied,
        so this is the center with every worker's ``epoch``-th pass in it.
        """
        state = self._require_state()
        flat = self._call(lambda: state.epochs.take(epoch))
        return None if flat is None else self.layout.unflatten(flat)

    @property
    def control(self) -> Control:
        """What the workers are asked now (see :meth:`request`)."""
        return self._state.control if self._state is not None else NO_CONTROL

    def progress(self, worker: int) -> int:
        """Local steps of ``worker`` applied to the center by any of its attempts."""
        state = self._require_state()
        return self._call(lambda: state.progress.get(worker, 0))

    def _failure(self) -> Failure | None:
        return self._state.failure if self._state is not None else None

"""A parameter server whose center is split across K server processes (shards).

Usage is :class:`~distkeras_async.server.parameter_server.ParameterServer`'s, plus
``shards``::

    server = ShardedParameterServer(weights, "downpour", num_workers=16, secret=s, shards=4)
    ports = server.start()         # one port per shard; workers connect to all of them
    ...
    weights = server.center        # every shard's slice, in one weight list
    server.stop()

Each shard is a child process (:mod:`distkeras_async.server.shard_process`) running an
ordinary parameter server on its slice (:func:`~distkeras_async.shards.split`), with
its own event loop, buffers and rule instance, on its own port; a worker commits its slices
to every shard at once and reassembles the reply
(:class:`~distkeras_async.worker.sharded_client.ShardedClient`). This object, on the driver,
starts and stops the shards, reads them over a pipe (:mod:`distkeras_async.server.control`),
writes the checkpoints, and turns a failure of one shard into a failure of all.

Semantics per shard (docs/scaling.md):

* asynchronous rules apply each commit per shard, in each shard's own order; a shard's
  staleness counts that shard's updates between a worker's pull and its commit;
* synchronous rounds complete on each shard when every live worker's slice arrived; a round
  that fails on one shard fails the run on all, and the center read afterwards (and every
  checkpoint) is every shard at the last round they all applied: all or nothing;
* authentication, TLS, limits and deduplication hold on every shard, which checks each
  connection itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from distkeras_async import checks
from distkeras_async.algorithm import Algorithm, flatten_state
from distkeras_async.errors import AlgorithmError, CheckpointError, ErrorCode
from distkeras_async.options import CheckpointOptions, Timeouts
from distkeras_async.server.core import Failure
from distkeras_async.server.limits import Capacity
from distkeras_async.server.run_setup import (
    FailureReporting,
    check_limits,
    prepare_run,
    sort_arguments,
    with_option_parameters,
)
from distkeras_async.server.shard_handle import ShardError, ShardProcess, algorithm_spec
from distkeras_async.server.stats import ServerStats
from distkeras_async.shards import split
from distkeras_async.wire import auth
from distkeras_async.wire.messages import NO_CONTROL, Control

logger = logging.getLogger("distkeras_async.server")

# How often the driver looks for a failed shard (to fail the others) and a due checkpoint.
WATCH_INTERVAL = 0.2


class ShardedParameterServer(FailureReporting):
    """A parameter server whose center is split across ``shards`` processes.

    Takes :class:`~distkeras_async.server.parameter_server.ParameterServer`'s arguments
    (weights, algorithm, ``num_workers``, ``secret``, host, the ``timeouts``,
    ``checkpoints`` and ``capacity`` groups or their options flat, ``resume_from``,
    hyperparameters) and reads like it (``center``, ``version``, ``stats()``, ``failure``,
    ``request()``, ...). Every shard enforces the timeouts and the capacity itself; the
    driver writes the checkpoints. The differences:

    Args:
        shards: the number of shard processes (at least 1; each holds a slice).
        port: the first shard's port (the others take the next ones); 0 lets the OS choose
            each (see :attr:`ports`).
        tls_files: ``(certificate, key)`` PEM files for TLS on every shard (a process
            cannot share an ``ssl.SSLContext``); None for plain TCP.
    """

    @with_option_parameters
    def __init__(
        self,
        weights: Sequence[np.ndarray] | np.ndarray,
        algorithm: str | type[Algorithm] | Algorithm,
        *,
        num_workers: int,
        secret: bytes,
        shards: int,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_files: tuple[str, str] | None = None,
        timeouts: Timeouts | None = None,
        checkpoints: CheckpointOptions | None = None,
        capacity: Capacity | None = None,
        use_uvloop: bool = True,
        resume_from: str | os.PathLike[str] | None = None,
        **keywords: Any,
    ) -> None:
        checks.positive_int(shards, "shards")
        check_limits(num_workers=num_workers, port=port)
        options = sort_arguments(
            keywords, timeouts=timeouts, checkpoints=checkpoints, capacity=capacity
        )
        if port and port + shards - 1 > 65535:
            raise ValueError(f"ports {port}..{port + shards - 1} exceed 65535")
        setup = prepare_run(
            weights,
            algorithm,
            options.hyperparameters,
            num_workers=num_workers,
            checkpoints=options.checkpoints,
            resume_from=resume_from,
        )
        self.algorithm, self.layout = setup.algorithm, setup.layout
        self._initial, self._initial_version = setup.initial, setup.initial_version
        self.checkpointer = setup.checkpointer
        self._algorithm_spec = algorithm_spec(self.algorithm)
        self._refuse_unsaved_rule_state(setup.rule_state)
        if shards > 1 and not self.algorithm.elementwise_server():
            raise AlgorithmError(
                f"algorithm {self.algorithm.name!r}: its server rule is not elementwise (a "
                "norm, a layer-wise scale), and each shard holds only a slice of the center; "
                "run it with one shard"
            )
        self.shards = split(self.layout, shards)
        if tls_files is not None:
            for path in tls_files:
                if not os.path.isfile(path):
                    raise ValueError(f"TLS file {path!r} does not exist")
        self.num_workers = num_workers
        self.host = host
        self._secret = auth.check_secret(secret)
        # The groups travel to each shard as plain maps (the control channel is msgpack);
        # the shard rebuilds them, so each shard applies the same checks and defaults.
        self._config = {
            "algorithm": self._algorithm_spec,
            "num_workers": num_workers,
            "secret": self._secret,
            "host": host,
            "tls": None if tls_files is None else list(tls_files),
            "timeouts": dataclasses.asdict(options.timeouts),
            "capacity": dataclasses.asdict(options.capacity),
            "use_uvloop": use_uvloop,
        }
        self._port = port
        self._processes: list[ShardProcess] = []
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failed_with: Failure | None = None
        self._epoch_pieces: dict[int, dict[int, np.ndarray]] = {}
        self._final: tuple[np.ndarray, int] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> tuple[int, ...]:
        """Start every shard (in parallel) and return their ports, in shard order.

        Raises:
            OSError: if a shard cannot bind its address.
            ShardError: if a shard process cannot start.
            RuntimeError: if the server was already started.
        """
        if self._processes:
            raise RuntimeError("the parameter server was already started")
        try:
            for shard in self.shards:
                process = ShardProcess(shard)
                self._processes.append(process)
                config = {
                    **self._config,
                    "port": self._port + shard.index if self._port else 0,
                    "shard": [shard.index, shard.count],
                    "layout": shard.layout.to_wire(),
                    "version": self._initial_version,
                }
                process.send_config(config, self._initial[shard.start : shard.stop])
            for process in self._processes:
                process.started()
        except BaseException:
            self._stop_processes(5.0)
            raise
        self._watcher = threading.Thread(
            target=self._watch, name="distkeras-shard-watcher", daemon=True
        )
        self._watcher.start()
        logger.info(
            "sharded parameter server (%s, %d workers, %d shards) listening on %s:%s",
            self.algorithm.name,
            self.num_workers,
            len(self.shards),
            self.host,
            self.ports,
        )
        return self.ports

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching, keep the final center, stop every shard, and return. Idempotent."""
        if not self._processes:
            return
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
        with contextlib.suppress(ShardError):
            self._final = self._consistent_center()
        self._stop_processes(timeout)

    def _stop_processes(self, timeout: float) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            process.stop(timeout)

    def __enter__(self) -> ShardedParameterServer:
        if not self._processes:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether every shard process is serving."""
        return bool(self._processes) and all(p.process.poll() is None for p in self._processes)

    @property
    def ports(self) -> tuple[int, ...]:
        """Each shard's port, in shard order (what the workers connect to)."""
        if not self._processes or any(p.port is None for p in self._processes):
            raise RuntimeError("the parameter server has not been started")
        return tuple(int(p.port or 0) for p in self._processes)

    @property
    def port(self) -> int | None:
        """The first shard's port (None before :meth:`start`)."""
        return self._processes[0].port if self._processes else None

    # -- the watcher -------------------------------------------------------------------

    def _watch(self) -> None:
        """Fail every shard when one fails; write the checkpoints that are due."""
        while not self._stopping.wait(WATCH_INTERVAL):
            try:
                if self._failed_with is None:
                    self._look_for_failure()
                self._maybe_checkpoint()
            except ShardError as exc:
                self._failed(Failure(ErrorCode.INTERNAL, str(exc)))

    def _look_for_failure(self) -> None:
        found: list[Failure] = []
        for process in self._processes:
            index = process.shard.index
            if process.process.poll() is not None:
                found.append(Failure(ErrorCode.INTERNAL, f"shard {index} {process.exit_note()}"))
                continue
            header, _ = process.ask("failure")
            if header["failed"]:
                reason = f"shard {index}: {header['reason']}"
                found.append(Failure(ErrorCode(header["code"]), reason, header["at"]))
        if found:
            self._failed(min(found, key=lambda failure: failure.at))

    def _failed(self, failure: Failure) -> None:
        if self._failed_with is not None:
            return
        self._failed_with = failure
        for process in self._processes:
            if process.process.poll() is None:
                with contextlib.suppress(ShardError):
                    process.ask("fail", code=failure.code.value, reason=failure.reason)

    def _maybe_checkpoint(self) -> None:
        checkpointer = self.checkpointer
        if checkpointer is None or self._failed_with is not None:
            return
        version = self.version
        if not checkpointer.due(version, time.monotonic()):
            return
        center, version = self._consistent_center()
        checkpointer.start(version, time.monotonic())
        checkpointer.write(center, version)
        reason = checkpointer.failed_for_good
        if reason is not None:
            self._failed(Failure(ErrorCode.CHECKPOINT_FAILED, reason))

    # -- reading the shards ------------------------------------------------------------

    def _each(self, op: str, **args: Any) -> list[tuple[dict[str, Any], np.ndarray | None]]:
        if not self._processes:
            raise RuntimeError("the parameter server has not been started")
        return [process.ask(op, **args) for process in self._processes]

    def _versions(self) -> list[int]:
        return [int(header["version"]) for header, _ in self._each("version")]

    def _consistent_center(self) -> tuple[np.ndarray, int]:
        """The center with every shard at one version, and that version.

        A synchronous run reads every shard at the last round all of them applied (a shard
        keeps the round before its current one). An asynchronous run has no common
        version: it reads each shard's current slice, and reports the smallest version.
        """
        flat = np.empty(self.layout.size, np.float32)
        for _attempt in range(50):
            versions = self._versions()
            target = min(versions)
            complete = True
            for process in self._processes:
                args = {"version": target} if self.algorithm.synchronous else {}
                _, piece = process.ask("center", **args)
                if piece is None:  # moved on twice since: read again
                    complete = False
                    break
                flat[process.shard.start : process.shard.stop] = piece
            if complete:
                return flat, target
        raise ShardError("the shards' versions kept moving; no consistent center could be read")

    @property
    def center_flat(self) -> np.ndarray:
        """A copy of the center as one flat float32 vector (all shards, one round)."""
        if self._processes:
            return self._consistent_center()[0]
        if self._final is not None:
            return self._final[0].copy()
        if self._stopping.is_set():  # stopped, but a shard could not be read at the end
            raise ShardError("the center was lost: a shard could not be read when it stopped")
        return self._initial.copy()

    @property
    def center(self) -> list[np.ndarray]:
        """A copy of the center as a weight list (``keras_model.set_weights`` accepts it)."""
        return self.layout.unflatten(self.center_flat)

    @property
    def version(self) -> int:
        """Updates every shard applied (the smallest shard version)."""
        if not self._processes:
            return self._initial_version if self._final is None else self._final[1]
        return min(self._versions())

    def _refuse_unsaved_rule_state(self, resumed: tuple[np.ndarray, ...]) -> None:
        """A rule whose server keeps state cannot be checkpointed here (yet): refuse it.

        Each shard holds its slice of that state, and the driver's checkpoints gather only
        the center's slices.
        """
        self.algorithm.server_start(self.layout)
        self._keeps_rule_state = bool(flatten_state(self.algorithm.server_state()))
        if (self._keeps_rule_state or resumed) and (self.checkpointer is not None or resumed):
            raise CheckpointError(self._unsaved_rule_state())

    def _unsaved_rule_state(self) -> str:
        return (
            f"algorithm {self.algorithm.name!r} keeps server state, which the checkpoints of "
            "a sharded server do not hold yet: checkpoint it with one shard"
        )

    def _snapshot_with_rule_state(self) -> tuple[np.ndarray, int, tuple[np.ndarray, ...]]:
        """The center and its version (a rule's server state is refused: see above)."""
        if self._keeps_rule_state:
            raise CheckpointError(self._unsaved_rule_state())
        center, version = self._snapshot()
        return center, version, ()

    def _snapshot(self) -> tuple[np.ndarray, int]:
        """The center at one round (the final one once stopped), and its version."""
        if self._processes:
            return self._consistent_center()
        if self._final is not None:
            return self._final[0].copy(), self._final[1]
        return self._initial.copy(), self._initial_version

    def stats(self) -> ServerStats:
        """The shards' statistics merged (:meth:`ServerStats.merge`)."""
        return ServerStats.merge(
            [ServerStats.from_plain(header["stats"]) for header, _ in self._each("stats")]
        )

    def shard_stats(self) -> list[ServerStats]:
        """Each shard's own statistics, in shard order."""
        return [ServerStats.from_plain(header["stats"]) for header, _ in self._each("stats")]

    def unfinished_attempts(
        self,
    ) -> dict[tuple[int, int], list[tuple[int, float, dict[str, float]]]]:
        """As the single server's; step records travel to the first shard only."""
        header, _ = self._processes[0].ask("unfinished_attempts")
        return {
            (int(w), int(a)): [(int(i), float(t), dict(m)) for i, t, m in records]
            for w, a, records in header["attempts"]
        }

    def request(self, *, stop: bool | None = None, learning_rate: float | None = None) -> None:
        """Ask every worker to stop or change its rate (every shard carries the request)."""
        if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate}")
        self._each("request", stop=stop, learning_rate=learning_rate)

    def keep_epoch_centers(self) -> None:
        """Keep a copy of the center as each global epoch ends, on every shard."""
        self._each("keep_epoch_centers")

    def take_epoch_center(self, epoch: int) -> list[np.ndarray] | None:
        """The center as global ``epoch`` ended, once every shard has it; else None."""
        pieces = self._epoch_pieces.setdefault(epoch, {})
        for process in self._processes:
            if process.shard.index not in pieces:
                _, piece = process.ask("take_epoch_center", epoch=epoch)
                if piece is not None:
                    pieces[process.shard.index] = piece
        if len(pieces) < len(self.shards):
            return None
        del self._epoch_pieces[epoch]
        return self.layout.unflatten(np.concatenate([pieces[s.index] for s in self.shards]))

    @property
    def control(self) -> Control:
        """What the workers are asked now (see :meth:`request`)."""
        if not self._processes:
            return NO_CONTROL
        header, _ = self._processes[0].ask("control")
        return NO_CONTROL.changed(header["stop"], header["learning_rate"])

    def progress(self, worker: int) -> int:
        """Local steps of ``worker`` that every shard applied."""
        return min(int(header["steps"]) for header, _ in self._each("progress", worker=worker))

    # -- failure -----------------------------------------------------------------------

    def _failure(self) -> Failure | None:
        if self._failed_with is None and self._processes and not self._stopping.is_set():
            with contextlib.suppress(ShardError):
                self._look_for_failure()
        return self._failed_with

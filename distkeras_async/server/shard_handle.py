"""The driver's handle on one shard process: start it, ask it, stop it.

A shard process (:mod:`distkeras_async.server.shard_process`) is a fresh interpreter that
imports neither Spark nor Keras; the driver writes its configuration and its slice of the
center to its stdin and reads its answers from its stdout, one request at a time, each read
with a deadline (:mod:`distkeras_async.server.control`).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
from typing import Any

import numpy as np

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import DistKerasError
from distkeras_async.server import control
from distkeras_async.shards import Shard

logger = logging.getLogger("distkeras_async.server")

# Seconds a shard has to start (a fresh Python importing numpy and this package: ~0.5 s)
# and to answer one control request.
START_TIMEOUT = 60.0
ANSWER_TIMEOUT = 60.0


class ShardError(DistKerasError):
    """A shard process could not start, or stopped answering."""


class UnshippableAlgorithmError(ValueError):
    """An algorithm class another process cannot import (from ``__main__`` or a function)."""


def algorithm_spec(algorithm: Algorithm) -> dict[str, Any]:
    """How a shard process finds ``algorithm``: its registered name or its import path.

    Raises:
        UnshippableAlgorithmError: for a class that another process cannot import (one
            defined in ``__main__`` or inside a function): register it as a plugin, or
            define it in a module.
    """
    cls = type(algorithm)
    settings = dict(algorithm.settings)
    with contextlib.suppress(Exception):
        if registry.get(algorithm.name) is cls:
            return {"name": algorithm.name, "settings": settings}
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise UnshippableAlgorithmError(
            f"a sharded parameter server runs {cls.__qualname__!r} in other processes, which "
            "cannot import a class defined in __main__ or in a function: define it in a "
            "module, or register it (registry.register or an entry point), or use shards=1"
        )
    return {"name": None, "path": f"{cls.__module__}:{cls.__qualname__}", "settings": settings}


class ShardProcess:
    """The driver's handle on one shard process: its pipe, one request at a time."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.port: int | None = None
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "distkeras_async.server.shard_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._out = self.process.stdin.fileno()
        self._in = self.process.stdout.fileno()

    def send_config(self, config: dict[str, Any], center: np.ndarray) -> None:
        """Send the shard's configuration and its slice of the center (it starts serving)."""
        control.write(self._out, config, center)

    def started(self) -> int:
        """Wait for the shard to listen; its port.

        Raises:
            OSError: if it cannot bind its address.
            ShardError: if it failed to start otherwise.
        """
        header, _ = self._answer(START_TIMEOUT)
        if not header.get("ok"):
            error = str(header.get("error"))
            if header.get("kind") == "OSError":
                raise OSError(error)
            raise ShardError(f"shard {self.shard.index} did not start: {error}")
        self.port = int(header["port"])
        return self.port

    def ask(self, op: str, **args: Any) -> tuple[dict[str, Any], np.ndarray | None]:
        """One request to the shard and its answer (header, payload).

        Raises:
            ShardError: if the shard does not answer in time, has exited, or refused.
        """
        with self._lock:
            try:
                control.write(self._out, {"op": op, **args})
                header, data = self._answer(ANSWER_TIMEOUT)
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                raise ShardError(
                    f"shard {self.shard.index} ({self.exit_note()}) did not answer {op!r}: {exc}"
                ) from exc
        if not header.get("ok"):
            raise ShardError(f"shard {self.shard.index}: {op!r} failed: {header.get('error')}")
        return header, data

    def _answer(self, timeout: float) -> tuple[dict[str, Any], np.ndarray | None]:
        return control.read(self._in, timeout)

    def exit_note(self) -> str:
        """``running``, or how the process exited."""
        code = self.process.poll()
        return "running" if code is None else f"exited with code {code}"

    def stop(self, timeout: float) -> None:
        """Ask the shard to stop; kill it if it has not within ``timeout`` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ShardError):
                self.ask("stop")
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover - never hang the caller
                logger.error(
                    "shard %d did not stop within %gs; killing it", self.shard.index, timeout
                )
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

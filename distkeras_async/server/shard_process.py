"""One shard of a sharded parameter server, as a child process of the driver.

Started by :class:`~distkeras_async.server.sharded.ShardedParameterServer` as
``python -m distkeras_async.server.shard_process``. It reads its configuration and its slice
of the center from stdin (:mod:`distkeras_async.server.control` frames), runs an ordinary
:class:`~distkeras_async.server.parameter_server.ParameterServer` on that slice with its own
event loop, answers with the bound port, and then serves the driver's requests (the center,
the statistics, a failure, stop) until told to stop or until stdin closes: a shard never
outlives its driver.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from distkeras_async import registry
from distkeras_async.algorithm import Algorithm
from distkeras_async.errors import ErrorCode
from distkeras_async.layout import Layout
from distkeras_async.options import Timeouts
from distkeras_async.server import control
from distkeras_async.server.limits import Capacity
from distkeras_async.server.parameter_server import ParameterServer

logger = logging.getLogger("distkeras_async.server")

Handler = Callable[[ParameterServer, dict[str, Any]], tuple[dict[str, Any], np.ndarray | None]]


def load_algorithm(spec: dict[str, Any]) -> Algorithm:
    """The algorithm a shard runs: a registered name, or a ``module:qualname`` class."""
    settings = dict(spec["settings"])
    if spec.get("name") is not None:
        return registry.resolve(spec["name"], **settings)
    module, _, qualname = spec["path"].partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return registry.resolve(target, **settings)


def build(config: dict[str, Any], center: np.ndarray) -> ParameterServer:
    """The shard's server (not started) from the driver's configuration."""
    import ssl

    context = None
    if config["tls"] is not None:
        cert, key = config["tls"]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    layout = Layout.from_wire(config["layout"])
    return ParameterServer(
        layout.views(center),
        load_algorithm(config["algorithm"]),
        num_workers=config["num_workers"],
        secret=config["secret"],
        host=config["host"],
        port=config["port"],
        ssl_context=context,
        shard=(config["shard"][0], config["shard"][1]),
        version=config["version"],
        timeouts=Timeouts(**config["timeouts"]),
        capacity=Capacity(**config["capacity"]),
        use_uvloop=config["use_uvloop"],
    )


def _center(server: ParameterServer, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    flat = server.center_at(args["version"]) if "version" in args else server.center_flat
    return {"version": server.version}, flat


def _failure(server: ParameterServer, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    code = server.failure_code
    if code is None:
        return {"failed": False}, None
    failure = {"code": code.value, "reason": server.failure, "at": server.failure_time}
    return {"failed": True, **failure}, None


def _request(server: ParameterServer, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    server.request(stop=args["stop"], learning_rate=args["learning_rate"])
    return {}, None


def _keep_epoch_centers(
    server: ParameterServer, args: dict[str, Any]
) -> tuple[dict[str, Any], Any]:
    server.keep_epoch_centers()
    return {}, None


def _control(server: ParameterServer, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    return {"stop": server.control.stop, "learning_rate": server.control.learning_rate}, None


def _fail(server: ParameterServer, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    server.fail(ErrorCode(args["code"]), args["reason"])
    return {}, None


def _unfinished(server: ParameterServer, args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    attempts = server.unfinished_attempts()
    return {"attempts": [[w, a, records] for (w, a), records in attempts.items()]}, None


HANDLERS: dict[str, Handler] = {
    "center": _center,
    "version": lambda s, a: ({"version": s.version}, None),
    "stats": lambda s, a: ({"stats": s.stats().to_plain()}, None),
    "failure": _failure,
    "fail": _fail,
    "request": _request,
    "keep_epoch_centers": _keep_epoch_centers,
    "take_epoch_center": lambda s, a: ({}, _flat(s, s.take_epoch_center(a["epoch"]))),
    "progress": lambda s, a: ({"steps": s.progress(a["worker"])}, None),
    "unfinished_attempts": _unfinished,
    "control": _control,
}


def _flat(server: ParameterServer, weights: list[np.ndarray] | None) -> np.ndarray | None:
    return None if weights is None else server.layout.flatten(weights)


def serve(server: ParameterServer, requests: int, replies: int) -> None:
    """Answer the driver's requests until ``stop`` or until the channel closes."""
    while True:
        try:
            header, _ = control.read(requests)
        except control.ChannelClosedError:
            return
        op = header.get("op")
        if op == "stop":
            control.write(replies, {"ok": True})
            return
        handler = HANDLERS.get(str(op))
        try:
            if handler is None:
                raise ValueError(f"unknown control request {op!r}")
            answer, payload = handler(server, header)
        except Exception as exc:  # the driver gets the error; the shard keeps serving
            control.write(replies, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        control.write(replies, {"ok": True, **answer}, payload)


def main() -> int:
    """The shard process: configure, start, report the port, serve the driver."""
    requests, replies = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    # Nothing else may write to the channel: anything printed goes to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.WARNING, format="shard: %(levelname)s %(message)s")
    try:
        config, center = control.read(requests)
        assert center is not None
        server = build(config, center)
        port = server.start()
    except Exception as exc:
        kind = "OSError" if isinstance(exc, OSError) else type(exc).__name__
        control.write(replies, {"ok": False, "kind": kind, "error": str(exc)})
        return 1
    try:
        control.write(replies, {"ok": True, "port": port})
        serve(server, requests, replies)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

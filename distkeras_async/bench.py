"""Wire benchmark: ``commit_pull`` round trips per second against a raw-socket ceiling.

Both servers run in a thread of this process; every client is a separate process (so the
clients do not share the server's interpreter lock). In the same run it measures:

* **baseline** -- the physical ceiling: a plain blocking socket server that receives the
  update into a preallocated buffer, adds it to the center and sends the center back, with
  no framing, no authentication and no validation;
* **distkeras-async** -- a real :class:`~distkeras_async.server.ParameterServer` running
  DOWNPOUR, and real :class:`~distkeras_async.worker.client.ParameterServerClient` workers doing
  ``commit_pull`` into a preallocated array.

Each measurement runs ``duration`` seconds; the two alternate ``repeats`` times and the
medians are reported, so a burst of load on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing as mp
import os
import platform
import socket
import ssl
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event as EventT
from typing import Any

import numpy as np

from distkeras_async.wire.auth import new_secret
from distkeras_async.wire.compression import commit_bytes

# Round trips every client does before the clock starts (connection set-up, page faults).
_WARMUP = 3


@dataclass(frozen=True, slots=True)
class WireResult:
    """One benchmark result (medians over the repeats)."""

    params: int
    workers: int
    repeats: int
    duration_s: float
    round_trips_per_s: float
    baseline_round_trips_per_s: float
    ratio: float
    megabytes_per_s: float
    samples: dict[str, list[float]]
    shards: int = 1
    # With shards > 1: the same clients against one shard, in the same run, and the gain.
    one_shard_round_trips_per_s: float | None = None
    speedup_vs_one_shard: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------- raw baseline


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    while view.nbytes:
        n = sock.recv_into(view)
        if n == 0:
            return False
        view = view[n:]
    return True


class ThreadedBaselineServer:
    """A blocking socket server with one thread per client, for the baselines.

    Subclasses implement :meth:`serve`, which gets each accepted connection (TCP_NODELAY
    set, wrapped in TLS when ``tls`` is given) and answers its round trips until EOF.
    """

    def __init__(self, workers: int, tls: tuple[str, str] | None = None) -> None:
        self.context = None
        if tls is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(*tls)
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(60)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.settimeout(60)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True)
        with conn:
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        """Answer one client's round trips until it closes the connection."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting and wait (bounded) for the client threads."""
        self.listener.close()
        for t in self.threads:
            t.join(timeout=5)


class _RawServer(ThreadedBaselineServer):
    """The ceiling: receive into a preallocated buffer, add, send the center back."""

    def __init__(self, params: int, workers: int, tls: tuple[str, str] | None = None) -> None:
        self.center = np.zeros(params, np.float32)
        super().__init__(workers, tls)

    def serve(self, conn: socket.socket) -> None:
        update = np.empty_like(self.center)
        view = update.data.cast("B")
        center_view = self.center.data.cast("B")
        while _recv_exact(conn, view):
            with self.lock:
                np.add(self.center, update, out=self.center)
            conn.sendall(center_view)


def _raw_client(
    port: int, params: int, ca_file: str | None, start: EventT, duration: float, results: Any
) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ca_file is not None:
        context = ssl.create_default_context(cafile=ca_file)
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    update = np.full(params, 1e-6, np.float32)
    out = np.empty(params, np.float32)
    send_view, recv_view = update.data.cast("B"), out.data.cast("B")

    def round_trip() -> None:
        sock.sendall(send_view)
        if not _recv_exact(sock, recv_view):
            raise ConnectionError("baseline server closed the connection")

    _timed_loop(round_trip, start, duration, results)
    sock.close()


# --------------------------------------------------------------------------- an emulated link


def _pump(src: socket.socket, dst: socket.socket, bytes_per_s: float) -> None:
    """Copy ``src`` to ``dst`` at ``bytes_per_s`` at most (idle time earns no credit)."""
    buffer = bytearray(1 << 16)
    began, moved = time.perf_counter(), 0
    try:
        while n := src.recv_into(buffer):
            dst.sendall(memoryview(buffer)[:n])
            moved += n
            delay = began + moved / bytes_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                began, moved = time.perf_counter(), 0
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _relay(ports: Any, upstream: int, bytes_per_s: float) -> None:
    """Accept connections; pace each one's bytes to ``bytes_per_s`` each way."""
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(("127.0.0.1", upstream), timeout=300)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(300)
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=_pump, args=(src, dst, bytes_per_s), daemon=True).start()


class Link:
    """A relay process in front of ``upstream`` that paces every connection to ``mbit``.

    Each connection gets ``mbit`` Mbit/s each way, as a worker with its own network link
    would. This machine has no ``netem``; the relay's copies cost a little CPU, its pacing
    none. Close it with :meth:`close`.
    """

    def __init__(self, upstream: int, mbit: float) -> None:
        # A fresh interpreter, never a fork (TensorFlow's threads may be running here).
        context = mp.get_context("spawn")
        ports = context.Queue()
        self.process = context.Process(
            target=_relay, args=(ports, upstream, mbit * 1e6 / 8), daemon=True
        )
        self.process.start()
        self.port: int = int(ports.get(timeout=60))

    def close(self) -> None:
        """Stop the relay (its connections close)."""
        self.process.terminate()
        self.process.join(10)


# --------------------------------------------------------------------------- our server


def _ps_client(
    ports: tuple[int, ...],
    secret: bytes,
    worker: int,
    params: int,
    ca_file: str | None,
    start: EventT,
    duration: float,
    results: Any,
) -> None:
    from distkeras_async.layout import Layout
    from distkeras_async.worker.client import ParameterServerClient
    from distkeras_async.worker.protocols import Connection
    from distkeras_async.worker.sharded_client import ShardedClient

    tls = None if ca_file is None else ssl.create_default_context(cafile=ca_file)
    client: Connection
    if len(ports) == 1:
        client = ParameterServerClient("127.0.0.1", ports[0], secret, worker, ssl_context=tls)
    else:
        layout = Layout.of([np.zeros(params, np.float32)])
        client = ShardedClient("127.0.0.1", ports, secret, worker, layout=layout, ssl_context=tls)
    # An update with a spread of values, as a gradient step has (a constant one would make
    # every compressed dtype look exact).
    update = (np.random.default_rng(worker).normal(size=params) * 1e-6).astype(np.float32)
    out = np.empty(params, np.float32)
    _timed_loop(lambda: client.commit_pull(update, out=out), start, duration, results)
    client.close()


def matrix_arguments(doc: str | None, workers: list[int]) -> Any:
    """Parse a benchmark's ``--params --workers --duration --repeats``; print the machine.

    The machine line is the first line of every benchmark script's output.
    """
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=workers)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    return args


def _timed_loop(round_trip: Any, start: EventT, duration: float, results: Any) -> None:
    for _ in range(_WARMUP):
        round_trip()
    start.wait(60)
    count = 0
    began = time.perf_counter()
    deadline = began + duration
    while time.perf_counter() < deadline:
        round_trip()
        count += 1
    results.put((count, time.perf_counter() - began))


def _run_clients(target: Any, args_for: Any, workers: int, duration: float) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*args_for(i), start, duration, results))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"benchmark client exited with code {p.exitcode}")
    # Aggregate throughput: every client's round trips over the longest client's time.
    return float(sum(c for c, _ in outcomes) / max(t for _, t in outcomes))


def measure_baseline(
    params: int, workers: int, duration: float, tls: tuple[str, str] | None = None
) -> float:
    """Round trips per second of the raw-socket ceiling (over TLS when ``tls`` is given).

    Args:
        params: parameters in the model.
        workers: client processes.
        duration: seconds measured.
        tls: ``(certificate, key)`` PEM files for 127.0.0.1, or None for plain TCP.
    """
    server = _RawServer(params, workers, tls)
    ca_file = None if tls is None else tls[0]
    try:
        return _run_clients(
            _raw_client, lambda i: (server.port, params, ca_file), workers, duration
        )
    finally:
        server.close()


def measure_server(
    params: int,
    workers: int,
    duration: float,
    tls: tuple[str, str] | None = None,
    commit_dtype: str = "float32",
    shards: int = 1,
    link_mbit: float | None = None,
    pull_dtype: str = "float32",
) -> float:
    """Round trips per second through our server and client (DOWNPOUR).

    Args:
        params: parameters in the model.
        workers: client processes.
        duration: seconds measured.
        tls: ``(certificate, key)`` PEM files for 127.0.0.1 to run over TLS (the
            certificate is also the clients' CA), or None for plain TCP.
        commit_dtype: the dtype commits travel in.
        shards: server processes the center is split across (1: the in-process server).
        link_mbit: each client's connection runs through an emulated link of this many
            Mbit/s each way (:class:`Link`); None: loopback.
        pull_dtype: the dtype the center's change travels back in after each connection's
            first reply (float32: the whole center every time).
    """
    from distkeras_async.server.factory import make_server

    secret = new_secret()
    server = make_server(
        [np.zeros(params, np.float32)],
        "downpour",
        shards=shards,
        num_workers=workers,
        secret=secret,
        ssl_context=tls,
        commit_dtype=commit_dtype,
        pull_dtype=pull_dtype,
    )
    server.start()
    links = [] if link_mbit is None else [Link(port, link_mbit) for port in server.ports]
    ports = tuple(link.port for link in links) if links else server.ports
    ca_file = None if tls is None else tls[0]
    try:
        return _run_clients(
            _ps_client, lambda i: (ports, secret, i, params, ca_file), workers, duration
        )
    finally:
        for link in links:
            link.close()
        server.stop()


def run_wire_benchmark(
    params: int,
    workers: int = 1,
    *,
    duration: float = 3.0,
    repeats: int = 3,
    commit_dtype: str = "float32",
    shards: int = 1,
    pull_dtype: str = "float32",
) -> WireResult:
    """Measure both servers ``repeats`` times, alternating, and return the medians.

    With a compressed ``commit_dtype`` our commits travel smaller than the raw socket's
    float32 ones, and with a compressed ``pull_dtype`` so do the centers after each
    connection's first. With ``shards`` > 1 the same clients also run against one shard in
    each repeat, for the speedup.
    """
    if params < 1 or workers < 1 or repeats < 1 or duration <= 0 or shards < 1:
        raise ValueError("params, workers, shards, repeats must be >= 1 and duration > 0")
    ours: list[float] = []
    base: list[float] = []
    single: list[float] = []
    for _ in range(repeats):
        base.append(measure_baseline(params, workers, duration))
        measure = functools.partial(
            measure_server, params, workers, duration, commit_dtype=commit_dtype
        )
        ours.append(measure(shards=shards, pull_dtype=pull_dtype))
        if shards > 1:
            single.append(measure(pull_dtype=pull_dtype))
    ours_med, base_med = statistics.median(ours), statistics.median(base)
    single_med = statistics.median(single) if single else None
    samples = {"round_trips_per_s": ours, "baseline_round_trips_per_s": base}
    if single:
        samples["one_shard_round_trips_per_s"] = single
    return WireResult(
        params=params,
        workers=workers,
        repeats=repeats,
        duration_s=duration,
        round_trips_per_s=ours_med,
        baseline_round_trips_per_s=base_med,
        ratio=ours_med / base_med,
        # Each round trip moves the update in (in its commit dtype) and the center out (in
        # its pull dtype, but for each connection's first).
        megabytes_per_s=ours_med
        * (commit_bytes(commit_dtype, [params]) + commit_bytes(pull_dtype, [params]))
        / 1e6,
        samples=samples,
        shards=shards,
        one_shard_round_trips_per_s=single_med,
        speedup_vs_one_shard=None if single_med is None else ours_med / single_med,
    )

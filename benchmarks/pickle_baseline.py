"""distkeras-async against the classic way: length-prefixed pickle over a socket.

Distributed Keras (2017) moved weights as pickled Python objects behind a length prefix,
which is the "pickle-based exchange" DESIGN.md asks this project to be far ahead of. This
script measures, alternating in the same run (medians of ``--repeats``):

* **pickle** -- a blocking socket server (one thread per client) that reads a length
  prefix, reads the pickled list of arrays, ``pickle.loads`` it, adds it to the center and
  replies with ``pickle.dumps(center)`` behind a length prefix; clients do the mirror image.
  This is a benchmark baseline only: nothing in ``distkeras_async/`` uses pickle.
* **distkeras-async** -- the real ``ParameterServer`` (uvloop, DOWNPOUR) and
  ``ParameterServerClient`` processes doing ``commit_pull`` into a preallocated array.

    python benchmarks/pickle_baseline.py --params 1000000 10000000 --workers 1 2
"""

from __future__ import annotations

import json
import pickle
import socket
import statistics
import struct
from multiprocessing.synchronize import Event as EventT
from typing import Any

import numpy as np

from distkeras_async.bench import (
    ThreadedBaselineServer,
    _recv_exact,
    _run_clients,
    _timed_loop,
    matrix_arguments,
    measure_server,
)

_PREFIX = struct.Struct("!Q")


def _recv_message(sock: socket.socket) -> bytes | None:
    prefix = bytearray(_PREFIX.size)
    if not _recv_exact(sock, memoryview(prefix)):
        return None
    (size,) = _PREFIX.unpack(prefix)
    payload = bytearray(size)
    if not _recv_exact(sock, memoryview(payload)):
        return None
    return bytes(payload)


def _send_message(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_PREFIX.pack(len(payload)))
    sock.sendall(payload)


class _PickleServer(ThreadedBaselineServer):
    """The classic exchange: unpickle the update, add it, pickle the center back."""

    def __init__(self, params: int, workers: int) -> None:
        self.center = [np.zeros(params, np.float32)]
        super().__init__(workers)

    def serve(self, conn: socket.socket) -> None:
        while (payload := _recv_message(conn)) is not None:
            update = pickle.loads(payload)  # the baseline being measured
            with self.lock:
                for center, delta in zip(self.center, update, strict=True):
                    np.add(center, delta, out=center)
                reply = pickle.dumps(self.center, protocol=pickle.HIGHEST_PROTOCOL)
            _send_message(conn, reply)


def _pickle_client(port: int, params: int, start: EventT, duration: float, results: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    update = [np.full(params, 1e-6, np.float32)]

    def round_trip() -> None:
        _send_message(sock, pickle.dumps(update, protocol=pickle.HIGHEST_PROTOCOL))
        reply = _recv_message(sock)
        if reply is None:
            raise ConnectionError("pickle server closed the connection")
        pickle.loads(reply)  # the baseline being measured

    _timed_loop(round_trip, start, duration, results)
    sock.close()


def measure_pickle(params: int, workers: int, duration: float) -> float:
    """Round trips per second of the length-prefixed pickle exchange."""
    server = _PickleServer(params, workers)
    try:
        return _run_clients(_pickle_client, lambda i: (server.port, params), workers, duration)
    finally:
        server.close()


def main() -> None:
    args = matrix_arguments(__doc__, workers=[1, 2])
    rows = []
    for params in args.params:
        for workers in args.workers:
            classic: list[float] = []
            ours: list[float] = []
            for _ in range(args.repeats):
                classic.append(measure_pickle(params, workers, args.duration))
                ours.append(measure_server(params, workers, args.duration))
            row = {
                "params": params,
                "workers": workers,
                "pickle_round_trips_per_s": statistics.median(classic),
                "round_trips_per_s": statistics.median(ours),
                "samples": {"pickle": classic, "distkeras_async": ours},
            }
            row["speedup"] = row["round_trips_per_s"] / row["pickle_round_trips_per_s"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print("| parameters | workers | pickle (round trips/s) | distkeras-async | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['params']:,} | {row['workers']} | {row['pickle_round_trips_per_s']:.1f} "
            f"| {row['round_trips_per_s']:.1f} | {row['speedup']:.2f} |"
        )


if __name__ == "__main__":
    main()

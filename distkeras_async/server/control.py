"""The control channel between the driver and its shard processes: framed msgpack on a pipe.

Each shard of a sharded parameter server is a child process of the driver; the driver
talks to it over the child's stdin and stdout, never over the network. A frame is a
12-byte prefix (header length, payload length), a msgpack header (plain values only, no
pickle) and an optional raw payload (a float32 center slice, written as its bytes so a
large center is not copied into msgpack). Reads on the driver's side have a deadline, so
a shard that stopped answering is an error, not a hang.
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

_PREFIX = struct.Struct("<IQ")
# A control header holds a few scalars, statistics or step records: 64 MiB is far above
# any of them and bounds what a broken peer can make the other side allocate.
MAX_HEADER = 64 << 20


class ChannelClosedError(EOFError):
    """The other side closed the pipe (the process exited)."""


def write(fd: int, header: Mapping[str, Any], payload: np.ndarray | None = None) -> None:
    """Write one frame to ``fd``: ``header`` and, if given, ``payload``'s raw bytes."""
    head = msgpack.packb(dict(header), use_bin_type=True)
    body = b"" if payload is None else np.ascontiguousarray(payload).data.cast("B")
    _write_all(fd, _PREFIX.pack(len(head), len(body) if payload is not None else 2**64 - 1))
    _write_all(fd, head)
    if payload is not None:
        _write_all(fd, body)


def read(fd: int, timeout: float | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Read one frame from ``fd``; the payload as a writable float32 array, or None.

    Raises:
        ChannelClosedError: if the pipe closed.
        TimeoutError: if no whole frame arrived within ``timeout`` seconds.
        ValueError: if the frame is malformed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    prefix = _read_exactly(fd, _PREFIX.size, deadline)
    head_size, body_size = _PREFIX.unpack(prefix)
    if head_size > MAX_HEADER:
        raise ValueError(f"control header of {head_size} bytes")
    header = msgpack.unpackb(
        _read_exactly(fd, head_size, deadline), raw=False, strict_map_key=False
    )
    if not isinstance(header, dict):
        raise ValueError("a control header must be a map")
    if body_size == 2**64 - 1:
        return header, None
    if body_size % 4:
        raise ValueError("a control payload must be float32")
    payload = np.empty(body_size // 4, np.float32)
    _read_into(fd, payload.data.cast("B"), deadline)
    return header, payload


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view) :]


def _wait(fd: int, deadline: float | None) -> None:
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
        raise TimeoutError("no answer on the control channel in time")


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    buffer = bytearray(size)
    _read_into(fd, memoryview(buffer), deadline)
    return bytes(buffer)


def _read_into(fd: int, view: memoryview, deadline: float | None) -> None:
    while view.nbytes:
        _wait(fd, deadline)
        chunk = os.readv(fd, [view])
        if chunk == 0:
            raise ChannelClosedError("the control channel closed")
        view = view[chunk:]

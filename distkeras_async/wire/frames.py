"""Frames: bytes <-> (op, ids, fields, tensors), with no sockets and no asyncio.

A frame is::

    <u32 little-endian header length> <msgpack header> <tensor 0 bytes> <tensor 1 bytes> ...

The header is a msgpack map ``{"v": version, "op": op, "w": worker, "a": attempt, "s": seq,
"t": [[dtype, shape], ...], "f": {op-specific fields}}``. The payload size follows from the
tensor list, so it is checked against the limit *before* anything is allocated, and tensors
travel as raw bytes after the header (msgpack-packing a large ``bytes`` object is slow).

:func:`encode` returns buffers for ``writelines``/``sendmsg``, tensors included without a
copy; :class:`~distkeras_async.wire.decoder.FrameDecoder` turns bytes back into frames.
Nothing here unpickles or evaluates anything: dtypes come from a fixed table. Code above the
wire speaks in typed messages (:mod:`~distkeras_async.wire.messages`); a :class:`Frame` is
their envelope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from distkeras_async.errors import LocalProtocolError, RemoteProtocolError
from distkeras_async.wire.schema import (
    DTYPES,
    MAX_HEADER_BYTES,
    PREFIX,
    PROTOCOL_VERSION,
    Op,
    TensorSpec,
    check_fields,
    check_tensor_count,
    is_int,
    spec_from_wire,
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: op, identity of the sender, op fields and tensors."""

    op: Op
    worker: int = 0
    attempt: int = 0
    seq: int = 0
    fields: Mapping[str, Any] = field(default_factory=dict)
    tensors: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """A validated header, handed to the payload allocator before any payload byte is read."""

    op: Op
    worker: int
    attempt: int
    seq: int
    fields: Mapping[str, Any]
    specs: tuple[TensorSpec, ...]

    @property
    def payload_size(self) -> int:
        """Total number of tensor bytes that follow the header."""
        return sum(spec.nbytes for spec in self.specs)


# --------------------------------------------------------------------------- encoding


def encode(frame: Frame) -> list[bytes | memoryview]:
    """Encode a frame as a list of buffers, ready for ``writelines`` or ``sendmsg``.

    The first buffer is the length prefix plus the msgpack header; each tensor follows as a
    byte view of the array's own memory (no copy for C-contiguous arrays).

    Raises:
        LocalProtocolError: if the frame is not valid (bad field, dtype, header too large).
    """
    if not isinstance(frame.op, Op):
        raise LocalProtocolError(f"unknown op {frame.op!r}")
    for name in ("worker", "attempt", "seq"):
        if not is_int(getattr(frame, name)):
            raise LocalProtocolError(f"{name} must be a non-negative int")
    check_fields(frame.op, frame.fields, LocalProtocolError)
    check_tensor_count(frame.op, len(frame.tensors), LocalProtocolError)
    # ascontiguousarray turns a 0-d array into shape (1,); reshape back to keep the shape.
    arrays = [np.ascontiguousarray(t).reshape(np.shape(t)) for t in frame.tensors]
    header = {
        "v": PROTOCOL_VERSION,
        "op": frame.op.value,
        "w": frame.worker,
        "a": frame.attempt,
        "s": frame.seq,
        "t": [TensorSpec.of(a).to_wire() for a in arrays],
        "f": dict(frame.fields),
    }
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:  # ints beyond 64 bits, surrogates
        raise LocalProtocolError(f"frame cannot be packed ({exc})") from None
    if len(packed) > MAX_HEADER_BYTES:
        raise LocalProtocolError(f"header of {len(packed)} bytes exceeds {MAX_HEADER_BYTES}")
    buffers: list[bytes | memoryview] = [PREFIX.pack(len(packed)) + packed]
    # reshape(-1) is a view for contiguous arrays, and a 1-d uint8 view casts cleanly.
    buffers.extend(a.reshape(-1).view(np.uint8).data for a in arrays if a.size)
    return buffers


def encode_bytes(frame: Frame) -> bytes:
    """Encode a frame as one ``bytes`` object (copies; for tests and small messages)."""
    return b"".join(bytes(b) for b in encode(frame))


def parse_header(packed: bytes | bytearray | memoryview, max_payload_bytes: int) -> FrameHeader:
    """Decode and validate a msgpack header.

    Raises:
        RemoteProtocolError: for anything that is not a valid header within the limits.
    """
    try:
        raw = msgpack.unpackb(packed, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RemoteProtocolError(f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise RemoteProtocolError("header is not a msgpack map")
    version = raw.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise RemoteProtocolError(
            f"unsupported protocol version {version!r:.20} (this side speaks {PROTOCOL_VERSION})"
        )
    extra = set(raw) - {"v", "op", "w", "a", "s", "t", "f"}
    if extra:
        raise RemoteProtocolError(f"unexpected header keys {sorted(map(str, extra))[:5]}")
    try:
        op = Op(str(raw.get("op")))
    except ValueError:
        raise RemoteProtocolError(f"unknown op {raw.get('op')!r:.40}") from None
    ids = [raw.get(key, 0) for key in ("w", "a", "s")]
    if not all(is_int(v) for v in ids):
        raise RemoteProtocolError("worker, attempt and sequence number must be non-negative ints")
    fields = raw.get("f", {})
    if not isinstance(fields, dict):
        raise RemoteProtocolError("header fields must be a map")
    check_fields(op, fields, RemoteProtocolError)
    tensors = raw.get("t", [])
    if not isinstance(tensors, list):
        raise RemoteProtocolError("tensor list must be an array")
    check_tensor_count(op, len(tensors), RemoteProtocolError)
    specs = tuple(spec_from_wire(item) for item in tensors)
    header = FrameHeader(op, ids[0], ids[1], ids[2], fields, specs)
    if header.payload_size > max_payload_bytes:
        raise RemoteProtocolError(
            f"payload of {header.payload_size} bytes exceeds the limit of {max_payload_bytes}"
        )
    return header


def tensors_from_payload(
    specs: Sequence[TensorSpec], payload: memoryview
) -> tuple[np.ndarray, ...]:
    """Numpy views (no copy) of the tensors laid out in ``payload``."""
    out = []
    offset = 0
    for spec in specs:
        dtype = DTYPES[spec.dtype]
        array = np.frombuffer(payload, dtype=dtype, count=spec.size, offset=offset)
        out.append(array.reshape(spec.shape))
        offset += spec.nbytes
    return tuple(out)

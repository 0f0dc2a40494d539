"""Sans-IO wire codec: messages to bytes and bytes to messages, with no sockets and no asyncio.

A frame is::

    <u32 little-endian header length> <msgpack header> <tensor 0 bytes> <tensor 1 bytes> ...

The header is a msgpack map ``{"v": version, "op": op, "w": worker, "a": attempt, "s": seq,
"t": [[dtype, shape], ...], "f": {op-specific fields}}``. The payload size follows from the
tensor list, so it is checked against the limit *before* anything is allocated, and tensors
travel as raw bytes after the header (msgpack-packing a large ``bytes`` object is slow).

Both ends use :func:`encode` (which returns buffers for ``writelines``/``sendmsg``, tensors
included without a copy) and :class:`FrameDecoder` (which is fed bytes, or hands out the
buffer the next bytes must go into, for ``recv_into`` and ``asyncio.BufferedProtocol``).
Nothing here unpickles or evaluates anything: dtypes come from a fixed table.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

from distkeras_async.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1

PREFIX = struct.Struct("<I")

# A header holds a handful of scalars plus, in `welcome`, the model layout; 64 KiB fits the
# layout of a model with thousands of weight tensors while bounding what a peer can make us parse.
MAX_HEADER_BYTES = 64 * 1024

# Default payload cap: 4 GiB is 1G float32 parameters, ten times the largest model we benchmark.
# The server lowers it to the model's own size, the only payload it ever accepts.
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024**3

# A tensor list longer than this is not a model update (updates are one flat vector).
MAX_TENSORS = 4096
MAX_NDIM = 32

# Fixed dtype table: dtype names on the wire are looked up here, never passed to np.dtype()
# (np.dtype("O") would let a peer create object arrays).
DTYPES: Mapping[str, np.dtype[Any]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

_MAX_INT = 2**63 - 1


class Op(StrEnum):
    """Every message kind; replies (`center`, `ack`) are ops like the requests."""

    CHALLENGE = "challenge"  # server -> client: nonce
    HELLO = "hello"  # client -> server: proof of the secret
    WELCOME = "welcome"  # server -> client: layout, algorithm, settings
    PULL = "pull"  # client -> server: send me the center
    COMMIT = "commit"  # client -> server: apply this update
    COMMIT_PULL = "commit_pull"  # client -> server: apply, then send the new center
    REPORT = "report"  # client -> server: metrics
    ERROR = "error"  # either way: reason, then the connection closes
    BYE = "bye"  # client -> server: orderly goodbye
    CENTER = "center"  # server -> client: the center variable
    ACK = "ack"  # server -> client: commit/report accepted


# --------------------------------------------------------------------------- field schemas


def _is_int(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_INT


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _is_nonce(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 32


def _is_text(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 4096


def _is_scalar(value: object) -> bool:
    return value is None or type(value) in (bool, str) or _is_number(value)


def _is_metrics(value: object) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= 256
        and all(isinstance(k, str) and len(k) <= 128 and _is_number(v) for k, v in value.items())
    )


def _is_settings(value: object) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= 256
        and all(isinstance(k, str) and len(k) <= 128 and _is_scalar(v) for k, v in value.items())
    )


def _is_layout(value: object) -> bool:
    if not isinstance(value, list) or len(value) > MAX_TENSORS:
        return False
    try:
        for item in value:
            _spec_from_wire(item)
    except RemoteProtocolError:
        return False
    return True


_Check = Callable[[object], bool]

# op -> {field: (check, required)}; unknown fields are rejected, so the schema is the contract.
_FIELDS: Mapping[Op, Mapping[str, tuple[_Check, bool]]] = {
    Op.CHALLENGE: {"nonce": (_is_nonce, True)},
    Op.HELLO: {"proof": (_is_nonce, True), "nonce": (_is_nonce, True)},
    Op.WELCOME: {
        "proof": (_is_nonce, True),
        "layout": (_is_layout, True),
        "algorithm": (_is_text, True),
        "hyperparameters": (_is_settings, True),
        "version": (_is_int, True),
        "num_workers": (_is_int, True),
        "synchronous": (lambda v: type(v) is bool, True),
        "next_seq": (_is_int, True),
        "round_timeout": (_is_number, True),
    },
    Op.PULL: {},
    Op.COMMIT: {},
    Op.COMMIT_PULL: {},
    Op.REPORT: {"metrics": (_is_metrics, True)},
    Op.ERROR: {"message": (_is_text, True)},
    Op.BYE: {},
    Op.CENTER: {"version": (_is_int, True), "duplicate": (lambda v: type(v) is bool, False)},
    Op.ACK: {"version": (_is_int, True), "duplicate": (lambda v: type(v) is bool, False)},
}

TENSOR_OPS = frozenset({Op.COMMIT, Op.COMMIT_PULL, Op.CENTER})


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """The dtype name and shape of one tensor in a frame."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise LocalProtocolError(f"unsupported dtype {self.dtype!r}; allowed: {sorted(DTYPES)}")
        if len(self.shape) > MAX_NDIM or not all(_is_int(d) for d in self.shape):
            raise LocalProtocolError(f"invalid shape {self.shape!r}")

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Number of payload bytes."""
        return self.size * DTYPES[self.dtype].itemsize

    @classmethod
    def of(cls, array: np.ndarray) -> TensorSpec:
        """The spec of a numpy array (which must have a wire dtype)."""
        name = _DTYPE_NAMES.get(array.dtype.newbyteorder("<"))
        if name is None or (array.dtype.byteorder == ">"):
            raise LocalProtocolError(
                f"dtype {array.dtype} cannot travel; allowed: {sorted(DTYPES)}"
            )
        return cls(name, tuple(int(d) for d in array.shape))

    def to_wire(self) -> list[Any]:
        """The ``[dtype, shape]`` pair as it appears in a header."""
        return [self.dtype, list(self.shape)]


def _spec_from_wire(item: object) -> TensorSpec:
    if not (isinstance(item, list) and len(item) == 2):
        raise RemoteProtocolError(f"tensor entry must be [dtype, shape], got {item!r:.80}")
    dtype, shape = item
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise RemoteProtocolError(f"unsupported dtype {dtype!r:.40}; allowed: {sorted(DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(_is_int(d) for d in shape)):
        raise RemoteProtocolError(f"invalid tensor shape {shape!r:.80}")
    # numpy refuses a shape whose non-zero dims overflow its index type even when another
    # dim is 0 (so the tensor is empty and passes the payload limit): reject it here.
    if math.prod(d for d in shape if d) * DTYPES[dtype].itemsize > _MAX_INT:
        raise RemoteProtocolError(f"tensor shape {shape!r:.80} is too large")
    return TensorSpec(dtype, tuple(shape))


@dataclass(frozen=True, slots=True)
class Message:
    """One protocol message: op, identity of the sender, op fields and tensors."""

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


def _check_fields(op: Op, fields: Mapping[str, Any], error: type[Exception]) -> None:
    schema = _FIELDS[op]
    for name in fields:
        if name not in schema:
            raise error(f"unexpected field {name!r:.40} in {op.value!r} message")
    for name, (check, required) in schema.items():
        if name in fields:
            if not check(fields[name]):
                raise error(f"invalid value for field {name!r} in {op.value!r} message")
        elif required:
            raise error(f"missing field {name!r} in {op.value!r} message")


def _check_tensor_count(op: Op, count: int, error: type[Exception]) -> None:
    if op in TENSOR_OPS and count == 0:
        raise error(f"{op.value!r} message must carry at least one tensor")
    if op not in TENSOR_OPS and count:
        raise error(f"{op.value!r} message must not carry tensors")
    if count > MAX_TENSORS:
        raise error(f"too many tensors ({count} > {MAX_TENSORS})")


# --------------------------------------------------------------------------- encoding


def encode(message: Message) -> list[bytes | memoryview]:
    """Encode a message as a list of buffers, ready for ``writelines`` or ``sendmsg``.

    The first buffer is the length prefix plus the msgpack header; each tensor follows as a
    byte view of the array's own memory (no copy for C-contiguous arrays).

    Raises:
        LocalProtocolError: if the message is not valid (bad field, dtype, header too large).
    """
    if not isinstance(message.op, Op):
        raise LocalProtocolError(f"unknown op {message.op!r}")
    for name in ("worker", "attempt", "seq"):
        if not _is_int(getattr(message, name)):
            raise LocalProtocolError(f"{name} must be a non-negative int")
    _check_fields(message.op, message.fields, LocalProtocolError)
    _check_tensor_count(message.op, len(message.tensors), LocalProtocolError)
    # ascontiguousarray turns a 0-d array into shape (1,); reshape back to keep the shape.
    arrays = [np.ascontiguousarray(t).reshape(np.shape(t)) for t in message.tensors]
    header = {
        "v": PROTOCOL_VERSION,
        "op": message.op.value,
        "w": message.worker,
        "a": message.attempt,
        "s": message.seq,
        "t": [TensorSpec.of(a).to_wire() for a in arrays],
        "f": dict(message.fields),
    }
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:  # ints beyond 64 bits, surrogates
        raise LocalProtocolError(f"message cannot be packed ({exc})") from None
    if len(packed) > MAX_HEADER_BYTES:
        raise LocalProtocolError(f"header of {len(packed)} bytes exceeds {MAX_HEADER_BYTES}")
    buffers: list[bytes | memoryview] = [PREFIX.pack(len(packed)) + packed]
    # reshape(-1) is a view for contiguous arrays, and a 1-d uint8 view casts cleanly.
    buffers.extend(a.reshape(-1).view(np.uint8).data for a in arrays if a.size)
    return buffers


def encode_bytes(message: Message) -> bytes:
    """Encode a message as one ``bytes`` object (copies; for tests and small messages)."""
    return b"".join(bytes(b) for b in encode(message))


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
    if not all(_is_int(v) for v in ids):
        raise RemoteProtocolError("worker, attempt and sequence number must be non-negative ints")
    fields = raw.get("f", {})
    if not isinstance(fields, dict):
        raise RemoteProtocolError("header fields must be a map")
    _check_fields(op, fields, RemoteProtocolError)
    tensors = raw.get("t", [])
    if not isinstance(tensors, list):
        raise RemoteProtocolError("tensor list must be an array")
    _check_tensor_count(op, len(tensors), RemoteProtocolError)
    specs = tuple(_spec_from_wire(item) for item in tensors)
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


# --------------------------------------------------------------------------- decoding

PayloadAllocator = Callable[[FrameHeader], "memoryview | None"]
"""Given a validated header, return a writable byte buffer of exactly ``payload_size`` bytes,
or ``None`` to ask the decoder to wait until :meth:`FrameDecoder.provide_payload_buffer`."""

_PREFIX, _HEADER, _PAYLOAD, _WAIT, _BROKEN = range(5)

# While waiting for a payload buffer, bytes that still arrive are staged in chunks this big.
_STAGING_CHUNK = 64 * 1024
# Bytes staged beyond the waiting frame's payload (a pipelined next frame). A transport
# pauses reading while the decoder waits, so only the rest of one read can arrive.
_MAX_STAGED_EXTRA = 1024 * 1024


def _default_allocate(header: FrameHeader) -> memoryview:
    return memoryview(bytearray(header.payload_size))


class FrameDecoder:
    """Incremental decoder: feed it bytes, take complete messages out.

    Two ways to feed it, which may be mixed:

    * :meth:`receive_data` copies a chunk of bytes in (simple; for tests and fuzzing);
    * :meth:`get_buffer` / :meth:`buffer_updated` let the transport read *into* the
      decoder's buffers (``recv_into`` or ``asyncio.BufferedProtocol``), so a payload goes
      straight from the socket into the buffer the allocator chose.

    After any error the decoder is poisoned and refuses further input (like h11).
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        allocate: PayloadAllocator | None = None,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_payload_bytes = max_payload_bytes
        self.allocate: PayloadAllocator = allocate or _default_allocate
        self._messages: deque[Message] = deque()
        self._prefix = bytearray(PREFIX.size)
        self._header_buf = bytearray()
        self._state = _PREFIX
        self._target: memoryview = memoryview(self._prefix)
        self._filled = 0
        self._header: FrameHeader | None = None
        self._payload: memoryview | None = None
        self._staged = bytearray()
        self._stage_view: memoryview | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def waiting_for_buffer(self) -> bool:
        """True when a header arrived and the allocator asked to wait for a payload buffer."""
        return self._state == _WAIT

    @property
    def pending_header(self) -> FrameHeader | None:
        """The header of the frame being received, once it has been parsed."""
        return self._header

    @property
    def in_frame(self) -> bool:
        """True when part of a frame has arrived but not all of it."""
        return self._state != _PREFIX or self._filled > 0

    # -- feeding ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the decoder; complete messages become available to take."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            buf = self.get_buffer()
            n = min(buf.nbytes, view.nbytes)
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def get_buffer(self) -> memoryview:
        """The writable buffer the next incoming bytes belong in (never empty)."""
        if self._state == _BROKEN:
            raise RemoteProtocolError("decoder is unusable after a protocol error")
        if self._state == _WAIT:
            if self._stage_view is not None:
                # Asked again with no buffer_updated in between (uvloop's TLS transport does
                # this when a TLS record yields no data): the staged bytearray is still
                # exported, so it cannot grow; hand out the same, still unwritten, view.
                return self._stage_view
            start = len(self._staged)
            self._staged.extend(bytes(_STAGING_CHUNK))
            self._stage_view = memoryview(self._staged)[start:]
            return self._stage_view
        return self._target[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of the last :meth:`get_buffer`."""
        if self._state == _WAIT:
            assert self._stage_view is not None
            self._stage_view.release()
            self._stage_view = None
            del self._staged[len(self._staged) - _STAGING_CHUNK + nbytes :]
            if len(self._staged) > self._header_payload_size() + _MAX_STAGED_EXTRA:
                self._fail("too many bytes arrived while the frame waited for a payload buffer")
            return
        self._filled += nbytes
        try:
            while self._filled == self._target.nbytes and self._state != _WAIT:
                self._advance()
        except (RemoteProtocolError, LocalProtocolError):
            self._state = _BROKEN
            raise

    def provide_payload_buffer(self, buffer: memoryview) -> None:
        """Give the payload buffer the allocator deferred; staged bytes are copied into it."""
        if self._state != _WAIT or self._header is None:
            raise LocalProtocolError("no frame is waiting for a payload buffer")
        self._set_payload(buffer)
        if self._stage_view is not None:  # a get_buffer that was never reported: unwritten
            self._stage_view.release()
            self._stage_view = None
            del self._staged[len(self._staged) - _STAGING_CHUNK :]
        staged = self._staged
        self._staged = bytearray()
        self._state = _PAYLOAD
        take = min(len(staged), self._target.nbytes)
        if take:
            self._target[:take] = staged[:take]
        self.buffer_updated(take)
        if len(staged) > take:  # a pipelined next frame: decode it now
            self.receive_data(memoryview(staged)[take:])

    def next_message(self) -> Message | None:
        """The next complete message, or ``None`` if more bytes are needed."""
        return self._messages.popleft() if self._messages else None

    # -- internals ----------------------------------------------------------------------

    def _header_payload_size(self) -> int:
        return self._header.payload_size if self._header is not None else 0

    def _fail(self, reason: str) -> None:
        self._state = _BROKEN
        raise RemoteProtocolError(reason)

    def _set_payload(self, buffer: memoryview) -> None:
        assert self._header is not None
        buffer = buffer.cast("B") if buffer.format != "B" else buffer
        if buffer.nbytes != self._header.payload_size or buffer.readonly:
            raise LocalProtocolError("payload buffer has the wrong size or is read-only")
        self._payload = buffer
        self._target = buffer
        self._filled = 0

    def _advance(self) -> None:
        if self._state == _PREFIX:
            (length,) = PREFIX.unpack(self._prefix)
            if length > self.max_header_bytes:
                raise RemoteProtocolError(
                    f"header length {length} exceeds the limit of {self.max_header_bytes}"
                )
            if length == 0:
                raise RemoteProtocolError("empty header")
            self._header_buf = bytearray(length)
            self._target = memoryview(self._header_buf)
            self._filled = 0
            self._state = _HEADER
        elif self._state == _HEADER:
            self._header = parse_header(self._header_buf, self.max_payload_bytes)
            if self._header.payload_size == 0:
                self._emit(memoryview(b""))
                return
            buffer = self.allocate(self._header)
            if buffer is None:
                self._state = _WAIT
                return
            self._set_payload(buffer)
            self._state = _PAYLOAD
        elif self._state == _PAYLOAD:
            assert self._payload is not None
            self._emit(self._payload)

    def _emit(self, payload: memoryview) -> None:
        header = self._header
        assert header is not None
        tensors = tensors_from_payload(header.specs, payload) if header.specs else ()
        self._messages.append(
            Message(header.op, header.worker, header.attempt, header.seq, header.fields, tensors)
        )
        self._header = None
        self._payload = None
        self._state = _PREFIX
        self._target = memoryview(self._prefix)
        self._filled = 0

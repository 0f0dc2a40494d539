"""What may appear in a frame: ops, limits, the dtype table, each op's fields, tensor specs.

Everything a peer can put in a header is checked against this module before it is used:
unknown ops, fields, dtypes and out-of-range numbers are refused by name. The schema is the
contract; :mod:`~distkeras_async.wire.messages` builds one typed message per op on it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from distkeras_async.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

# Version 2: error frames carry a machine-readable `code`; commits carry the worker's step count
# and the records of the steps they include, the welcome the steps already applied.
# Version 3: the welcome says how long a reply may wait (reply_timeout). Version 4: the
# `state` op carries a worker rule's state with its commits and back to a resumed attempt.
PROTOCOL_VERSION = 4

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

# Error and text fields are cut to this many characters: enough for a traceback's tail.
MAX_TEXT = 4096

# Step records one report may carry; a worker sends more in several reports (the header
# limit, 64 KiB, bounds them further: the reporter flushes well before either).
MAX_HISTORY = 2048

# Fixed dtype table: dtype names on the wire are looked up here, never passed to np.dtype()
# (np.dtype("O") would let a peer create object arrays).
DTYPES: Mapping[str, np.dtype[Any]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    # Compressed commits (wire/compression.py): int8 values, and bfloat16 as its raw bits.
    "int8": np.dtype("i1"),
    "uint16": np.dtype("<u2"),
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

MAX_INT = 2**63 - 1


class Op(StrEnum):
    """Every message kind; replies (`center`, `ack`) are ops like the requests."""

    CHALLENGE = "challenge"  # server -> client: nonce
    HELLO = "hello"  # client -> server: proof of the secret
    WELCOME = "welcome"  # server -> client: layout, algorithm, settings
    PULL = "pull"  # client -> server: send me the center
    COMMIT = "commit"  # client -> server: apply this update
    COMMIT_PULL = "commit_pull"  # client -> server: apply, then send the new center
    REPORT = "report"  # client -> server: metrics
    ERROR = "error"  # either way: code and reason, then the connection closes
    BYE = "bye"  # client -> server: orderly goodbye
    CENTER = "center"  # server -> client: the center variable
    ACK = "ack"  # server -> client: commit/report accepted
    STATE = "state"  # client -> server: the rule's state after the next commit; back on resume


# Ops whose frames carry tensors. A commit or a center carries one flat vector (and an int8
# one its scales); a rule's state as many arrays as the rule keeps.
TENSOR_OPS = frozenset({Op.COMMIT, Op.COMMIT_PULL, Op.CENTER, Op.STATE})


# --------------------------------------------------------------------------- field checks


def is_int(value: object) -> bool:
    """A non-negative int that fits msgpack's signed 64 bits."""
    return type(value) is int and 0 <= value <= MAX_INT


def is_number(value: object) -> bool:
    """A finite int or float."""
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def is_bool(value: object) -> bool:
    """A bool (not an int)."""
    return type(value) is bool


def is_nonce(value: object) -> bool:
    """32 bytes."""
    return isinstance(value, bytes) and len(value) == 32


def is_text(value: object) -> bool:
    """A string of at most MAX_TEXT characters."""
    return isinstance(value, str) and len(value) <= MAX_TEXT


def is_code(value: object) -> bool:
    """One of the error codes."""
    return isinstance(value, str) and value in ErrorCode.__members__.values()


def is_scalar(value: object) -> bool:
    """None, a bool, a string or a finite number (a hyperparameter's value)."""
    return value is None or type(value) in (bool, str) or is_number(value)


def is_metrics(value: object) -> bool:
    """A map of at most 256 short names to finite numbers."""
    return (
        isinstance(value, dict)
        and len(value) <= 256
        and all(isinstance(k, str) and len(k) <= 128 and is_number(v) for k, v in value.items())
    )


def is_history(value: object) -> bool:
    """Step records ``[iteration, timestamp, {metric: value}]``, at most MAX_HISTORY."""
    return (
        isinstance(value, list)
        and len(value) <= MAX_HISTORY
        and all(
            isinstance(r, list)
            and len(r) == 3
            and is_int(r[0])
            and is_number(r[1])
            and is_metrics(r[2])
            for r in value
        )
    )


def is_settings(value: object) -> bool:
    """A map of at most 256 short names to scalars."""
    return (
        isinstance(value, dict)
        and len(value) <= 256
        and all(isinstance(k, str) and len(k) <= 128 and is_scalar(v) for k, v in value.items())
    )


def is_layout(value: object) -> bool:
    """A list of at most MAX_TENSORS ``[dtype, shape]`` pairs."""
    if not isinstance(value, list) or len(value) > MAX_TENSORS:
        return False
    try:
        for item in value:
            spec_from_wire(item)
    except RemoteProtocolError:
        return False
    return True


Check = Callable[[object], bool]


def is_shard(value: object) -> bool:
    """``[index, count]`` of a sharded center's shard: ``0 <= index < count``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(is_int(v) for v in value)
        and 0 <= value[0] < value[1]
    )


# The driver's requests to the workers, on every reply (see messages.Control).
CONTROL_FIELDS: Mapping[str, tuple[Check, bool]] = {
    "stop": (is_bool, False),
    "learning_rate": (is_number, False),
}

# op -> {field: (check, required)}; unknown fields are rejected, so the schema is the contract.
# Each message class of ``wire/messages.py`` declares its fields once and fills its op's entry
# when it is defined (importing any part of ``distkeras_async.wire`` defines them all).
FIELDS: dict[Op, Mapping[str, tuple[Check, bool]]] = {}


def check_fields(op: Op, fields: Mapping[str, Any], error: type[Exception]) -> None:
    """Raise ``error`` unless ``fields`` are exactly what ``op``'s schema allows."""
    schema = FIELDS[op]
    for name in fields:
        if name not in schema:
            raise error(f"unexpected field {name!r:.40} in {op.value!r} message")
    for name, (check, required) in schema.items():
        if name in fields:
            if not check(fields[name]):
                raise error(f"invalid value for field {name!r} in {op.value!r} message")
        elif required:
            raise error(f"missing field {name!r} in {op.value!r} message")


def check_tensor_count(op: Op, count: int, error: type[Exception]) -> None:
    """Raise ``error`` unless ``op`` may carry ``count`` tensors."""
    if op in TENSOR_OPS and count == 0:
        raise error(f"{op.value!r} message must carry at least one tensor")
    if op not in TENSOR_OPS and count:
        raise error(f"{op.value!r} message must not carry tensors")
    if count > MAX_TENSORS:
        raise error(f"too many tensors ({count} > {MAX_TENSORS})")


# --------------------------------------------------------------------------- tensor specs


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """The dtype name and shape of one tensor in a frame."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise LocalProtocolError(f"unsupported dtype {self.dtype!r}; allowed: {sorted(DTYPES)}")
        if len(self.shape) > MAX_NDIM or not all(is_int(d) for d in self.shape):
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


def spec_from_wire(item: object) -> TensorSpec:
    """A peer's ``[dtype, shape]`` pair as a TensorSpec, or RemoteProtocolError."""
    if not (isinstance(item, list) and len(item) == 2):
        raise RemoteProtocolError(f"tensor entry must be [dtype, shape], got {item!r:.80}")
    dtype, shape = item
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise RemoteProtocolError(f"unsupported dtype {dtype!r:.40}; allowed: {sorted(DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(is_int(d) for d in shape)):
        raise RemoteProtocolError(f"invalid tensor shape {shape!r:.80}")
    # numpy refuses a shape whose non-zero dims overflow its index type even when another
    # dim is 0 (so the tensor is empty and passes the payload limit): reject it here.
    if math.prod(d for d in shape if d) * DTYPES[dtype].itemsize > MAX_INT:
        raise RemoteProtocolError(f"tensor shape {shape!r:.80} is too large")
    return TensorSpec(dtype, tuple(shape))

"""Typed messages: one small frozen dataclass per op, each described once.

The server and the client speak in these, never in string-keyed mappings: a
:class:`Commit` has an ``update``, a :class:`Welcome` a ``layout`` and a ``version``, an
:class:`Error` a machine-readable :class:`~distkeras_async.errors.ErrorCode`. Each header
field is declared once, on its dataclass attribute (:func:`header`: its check, whether it may
be left out, and its wire form); the op's schema (``schema.FIELDS``, which the decoder checks
before it builds a message), the encoding and the decoding all derive from those
declarations. A message is checked against its schema when it is built, so an invalid one
fails where it is made (``LocalProtocolError``); one decoded from a peer was checked before
it was built (``RemoteProtocolError``).

Example::

    frame = Commit(update, worker=0, attempt=0, seq=7).to_frame()
    message = from_frame(frame)          # Commit(update=..., worker=0, attempt=0, seq=7)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from distkeras_async.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from distkeras_async.wire.frames import Frame, encode
from distkeras_async.wire.headers import MESSAGE_TYPES, Header, header, is_default, message
from distkeras_async.wire.schema import (
    CONTROL_FIELDS,
    MAX_TENSORS,
    MAX_TEXT,
    Op,
    TensorSpec,
    check_fields,
    is_bool,
    is_code,
    is_history,
    is_int,
    is_layout,
    is_metrics,
    is_nonce,
    is_number,
    is_settings,
    is_shard,
    is_text,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every message: the sender's identity, which every frame carries.

    Attributes:
        worker: the worker id (0 for server messages).
        attempt: the worker's Spark task attempt.
        seq: the sender's sequence number (commits are deduplicated by it).
    """

    op: ClassVar[Op]
    _headers: ClassVar[Mapping[str, Header]] = {}
    _defaults: ClassVar[Mapping[str, Any]] = {}
    worker: int = 0
    attempt: int = 0
    seq: int = 0

    def __post_init__(self) -> None:
        for name in ("worker", "attempt", "seq"):
            if not is_int(getattr(self, name)):
                raise LocalProtocolError(f"{name} must be a non-negative int")
        check_fields(self.op, self.wire_fields(), LocalProtocolError)

    def wire_fields(self) -> dict[str, Any]:
        """The op-specific header fields, from the declarations (defaults left out)."""
        fields: dict[str, Any] = {}
        for name, wire in self._headers.items():
            value = getattr(self, name)
            if wire.spread:
                fields.update(wire.out(value))
            elif not (wire.optional and is_default(value, self._defaults[name])):
                fields[name] = wire.out(value)
        return fields

    def wire_tensors(self) -> tuple[np.ndarray, ...]:
        """The tensors that follow the header."""
        return ()

    @classmethod
    def tensor_attributes(cls, tensors: tuple[np.ndarray, ...]) -> dict[str, Any]:
        """The attributes a frame's tensors become (the inverse of :meth:`wire_tensors`)."""
        return {}

    def to_frame(self) -> Frame:
        """The frame that carries this message."""
        return Frame(
            self.op, self.worker, self.attempt, self.seq, self.wire_fields(), self.wire_tensors()
        )

    @classmethod
    def from_wire(cls, frame: Frame) -> Message:
        """The message a checked frame carries (its fields were validated when decoded)."""
        attributes: dict[str, Any] = {}
        for name, wire in cls._headers.items():
            if wire.spread:
                attributes[name] = wire.into(frame.fields)
            elif name in frame.fields:
                attributes[name] = wire.into(frame.fields[name])
        attributes.update(cls.tensor_attributes(frame.tensors))
        return cls(**attributes, worker=frame.worker, attempt=frame.attempt, seq=frame.seq)


def _check_vector(update: object) -> None:
    if not isinstance(update, np.ndarray):
        raise LocalProtocolError(f"a tensor must be a numpy array, got {type(update).__name__}")


# -- the handshake -----------------------------------------------------------------------------


@message
@dataclass(frozen=True, slots=True)
class Challenge(Message):
    """Server -> client, first: a nonce the client must answer with its proof."""

    op: ClassVar[Op] = Op.CHALLENGE
    nonce: bytes = header(is_nonce)


@message
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Client -> server: proof of the secret for the challenge, and the client's own nonce."""

    op: ClassVar[Op] = Op.HELLO
    proof: bytes = header(is_nonce)
    nonce: bytes = header(is_nonce)


def _layout_out(layout: tuple[TensorSpec, ...]) -> list[Any]:
    return [spec.to_wire() for spec in layout]


def _layout_in(items: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(d, tuple(s)) for d, s in items)


def _shard_in(pair: Any) -> tuple[int, int]:
    return (pair[0], pair[1])


@message
@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Server -> client: the server's proof, the layout and the run's settings.

    Attributes:
        proof: the server's answer to the client's nonce.
        layout: the flat center's tensors, in ``get_weights()`` order.
        algorithm: the algorithm's registered name.
        hyperparameters: its settings.
        version: the center's version now.
        num_workers: workers in the run.
        synchronous: whether commits meet in rounds.
        next_seq: the sequence number this worker and attempt continue from.
        reply_timeout: seconds a worker waits for a commit's reply before it gives up by
            itself (a synchronous round's own timeout and a margin, so the server's error
            arrives first); 0 when a reply never waits for other workers.
        progress: local steps of this worker already applied to the center, by any of its
            attempts (a retried task resumes after them).
        shard: ``(index, count)`` when this server holds one shard of a sharded center
            (:mod:`distkeras_async.shards`); None for a whole center.
        state: a :class:`RuleState` follows, the worker rule's state when the server
            accepted this worker's last commit (a retried attempt resumes with it).
    """

    op: ClassVar[Op] = Op.WELCOME
    proof: bytes = header(is_nonce)
    layout: tuple[TensorSpec, ...] = header(is_layout, out=_layout_out, into=_layout_in)
    algorithm: str = header(is_text)
    hyperparameters: Mapping[str, Any] = header(is_settings, out=dict, into=dict)
    version: int = header(is_int)
    num_workers: int = header(is_int)
    synchronous: bool = header(is_bool)
    next_seq: int = header(is_int)
    reply_timeout: float = header(is_number, into=float)
    progress: int = header(is_int, default=0, always=True)
    shard: tuple[int, int] | None = header(is_shard, default=None, out=list, into=_shard_in)
    state: bool = header(is_bool, default=False)


# -- requests ----------------------------------------------------------------------------------


@message
@dataclass(frozen=True, slots=True)
class Pull(Message):
    """Client -> server: send me the center."""

    op: ClassVar[Op] = Op.PULL


StepRecords = tuple[tuple[int, float, Mapping[str, float]], ...]


def _history_to_wire(history: StepRecords) -> list[list[Any]]:
    return [[i, t, dict(m)] for i, t, m in history]


def _history_from_wire(items: Any) -> StepRecords:
    return tuple((i, float(t), {k: float(v) for k, v in m.items()}) for i, t, m in items)


def _metrics_in(metrics: Any) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


@message
@dataclass(frozen=True, slots=True, eq=False)
class Commit(Message):
    """Client -> server: apply ``update`` (one flat vector) with the algorithm's rule.

    ``steps``, when given, is how many local steps of the worker the update includes (all of
    them, since its first); the server remembers it for a retried attempt to resume after.
    ``history`` holds the records ``(iteration, timestamp, metrics)`` of the steps this
    update adds, so the server keeps the history of every step it applied, even of an attempt
    that is killed later. A compressed update (``wire/compression.py``) travels in its
    run's commit dtype; an int8 one carries ``scales``, one per tensor of the model.
    ``base``, when given, is the version of the center the update was computed from, if
    older than the last center the server sent this connection (an overlapped worker's,
    ``worker/overlap.py``): the server measures staleness from it.
    """

    op: ClassVar[Op] = Op.COMMIT
    update: np.ndarray
    steps: int | None = header(is_int, default=None)
    history: StepRecords = header(
        is_history, default=(), out=_history_to_wire, into=_history_from_wire
    )
    scales: np.ndarray | None = None
    base: int | None = header(is_int, default=None)

    def __post_init__(self) -> None:
        _check_vector(self.update)
        if self.scales is not None:
            _check_vector(self.scales)
        Message.__post_init__(self)

    def wire_tensors(self) -> tuple[np.ndarray, ...]:
        """The update (and its scales, for int8)."""
        return (self.update,) if self.scales is None else (self.update, self.scales)

    @classmethod
    def tensor_attributes(cls, tensors: tuple[np.ndarray, ...]) -> dict[str, Any]:
        """``update``, and ``scales`` when a second tensor came."""
        return {"update": tensors[0], "scales": tensors[1] if len(tensors) > 1 else None}


@message
@dataclass(frozen=True, slots=True, eq=False)
class CommitPull(Commit):
    """Client -> server: apply ``update``, then reply with the new center (one round trip)."""

    op: ClassVar[Op] = Op.COMMIT_PULL


@message
@dataclass(frozen=True, slots=True, eq=False)
class RuleState(Message):
    """A worker rule's state, as arrays (``Algorithm.worker_state``, flattened).

    Client -> server, just before a commit: the state after that commit, which the server
    keeps if it accepts the commit. Server -> client, right after a welcome that says so:
    the state to resume with. It needs no reply.
    """

    op: ClassVar[Op] = Op.STATE
    arrays: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        for array in self.arrays:
            _check_vector(array)
        Message.__post_init__(self)

    def wire_tensors(self) -> tuple[np.ndarray, ...]:
        """The arrays, in order."""
        return self.arrays

    @classmethod
    def tensor_attributes(cls, tensors: tuple[np.ndarray, ...]) -> dict[str, Any]:
        """Every tensor, in order."""
        return {"arrays": tuple(tensors)}


@message
@dataclass(frozen=True, slots=True)
class Report(Message):
    """Client -> server: the worker's latest metrics, and its step records since the last.

    The server keeps the records of every attempt, so the steps of an attempt that was killed
    are not lost from the run's history. With ``epoch`` set, the report closes the worker's
    ``epoch``-th pass over its partition (counted from 1) and ``metrics`` are that epoch's
    logs; the driver's callbacks run once every worker closed it.
    """

    op: ClassVar[Op] = Op.REPORT
    metrics: Mapping[str, float] = header(is_metrics, out=dict, into=_metrics_in)
    history: StepRecords = header(
        is_history, default=(), out=_history_to_wire, into=_history_from_wire
    )
    epoch: int | None = header(is_int, default=None)


@dataclass(frozen=True, slots=True)
class Control:
    """What the driver asks of every worker; it rides on every reply (Center and Ack).

    Attributes:
        stop: finish now: commit what is left and say goodbye (``EarlyStopping``).
        learning_rate: the learning rate for the workers' optimizers, or None to leave
            theirs (a schedule on the driver sets it).
    """

    stop: bool = False
    learning_rate: float | None = None

    def changed(self, stop: bool | None, learning_rate: float | None) -> Control:
        """This control with the given settings changed (None leaves one as it is)."""
        return Control(
            self.stop if stop is None else bool(stop),
            self.learning_rate if learning_rate is None else float(learning_rate),
        )

    def to_wire(self) -> dict[str, Any]:
        """The header fields: only those that are set, so a plain reply costs nothing."""
        fields: dict[str, Any] = {}
        if self.stop:
            fields["stop"] = True
        if self.learning_rate is not None:
            fields["learning_rate"] = float(self.learning_rate)
        return fields

    @classmethod
    def from_wire(cls, fields: Mapping[str, Any]) -> Control:
        """The control a reply's header carries."""
        rate = fields.get("learning_rate")
        return cls(bool(fields.get("stop", False)), None if rate is None else float(rate))


NO_CONTROL = Control()


def _control() -> Any:
    """The driver's control: spread over the reply's ``stop`` and ``learning_rate`` fields."""
    wire = Header(
        is_bool, True, Control.to_wire, Control.from_wire, spread=True, schema=CONTROL_FIELDS
    )
    return dataclasses.field(default=NO_CONTROL, metadata={"header": wire})


# -- either way --------------------------------------------------------------------------------


@message
@dataclass(frozen=True, slots=True)
class Error(Message):
    """Either way, last on a connection: what went wrong, as a code and a sentence."""

    op: ClassVar[Op] = Op.ERROR
    code: ErrorCode = header(is_code, out=str, into=ErrorCode)
    message: str = header(is_text)

    @classmethod
    def of(cls, code: ErrorCode, reason: str, **ids: int) -> Error:
        """An error frame for ``reason``, cut to the limit if needed.

        A long reason keeps its start and its end: a traceback's last lines say the most.
        """
        if len(reason) > MAX_TEXT:
            reason = reason[:200] + "\n...\n" + reason[-(MAX_TEXT - 205) :]
        return cls(code, reason, **ids)


@message
@dataclass(frozen=True, slots=True)
class Bye(Message):
    """Client -> server: the worker finished; the server closes the connection."""

    op: ClassVar[Op] = Op.BYE


# -- replies -----------------------------------------------------------------------------------


@message
@dataclass(frozen=True, slots=True, eq=False)
class Center(Message):
    """Server -> client: the center (one flat vector) at ``version``.

    ``duplicate`` says the commit this answers was a resend, recognised and not applied again;
    ``control`` carries the driver's requests to the workers. With ``change`` set (a run
    whose ``pull_dtype`` is not float32, after the connection's first reply), ``center`` is
    the change since the last reply in that dtype, with ``scales`` for int8
    (``wire/deltas.py``).
    """

    op: ClassVar[Op] = Op.CENTER
    center: np.ndarray
    version: int = header(is_int)
    duplicate: bool = header(is_bool, default=False)
    control: Control = _control()
    scales: np.ndarray | None = None
    change: bool = header(is_bool, default=False)

    def __post_init__(self) -> None:
        _check_vector(self.center)
        if self.scales is not None:
            _check_vector(self.scales)
        Message.__post_init__(self)

    def wire_tensors(self) -> tuple[np.ndarray, ...]:
        """The center (or its change, and the change's scales for int8)."""
        return (self.center,) if self.scales is None else (self.center, self.scales)

    @classmethod
    def tensor_attributes(cls, tensors: tuple[np.ndarray, ...]) -> dict[str, Any]:
        """``center``, and ``scales`` when a second tensor came."""
        return {"center": tensors[0], "scales": tensors[1] if len(tensors) > 1 else None}


@message
@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Server -> client: a commit or report was accepted; the center is at ``version``."""

    op: ClassVar[Op] = Op.ACK
    version: int = header(is_int)
    duplicate: bool = header(is_bool, default=False)
    control: Control = _control()


def from_frame(frame: Frame) -> Message:
    """The typed message a decoded frame carries.

    Raises:
        RemoteProtocolError: if a tensor op carries more tensors than its message has (the
            fields were checked when the frame was decoded).
    """
    cls = MESSAGE_TYPES[frame.op]
    # An int8 commit, or an int8 change of the center, carries its scales; a rule's state
    # as many arrays as the rule keeps (the frame's limits bound them).
    most = 2 if issubclass(cls, Commit | Center) else MAX_TENSORS
    if frame.tensors and len(frame.tensors) > most:
        raise RemoteProtocolError(
            f"{frame.op.value!r} message must carry one flat vector, got {len(frame.tensors)}"
        )
    return cls.from_wire(frame)


def encode_message(message: Message) -> list[bytes | memoryview]:
    """Encode a message as buffers for ``writelines``/``sendmsg`` (tensors not copied)."""
    return encode(message.to_frame())


def encode_message_bytes(message: Message) -> bytes:
    """Encode a message as one ``bytes`` object (copies; for tests and small messages)."""
    return b"".join(bytes(b) for b in encode_message(message))


__all__ = [
    "MESSAGE_TYPES",
    "NO_CONTROL",
    "Ack",
    "Bye",
    "Center",
    "Challenge",
    "Commit",
    "CommitPull",
    "Control",
    "Error",
    "Hello",
    "Message",
    "Pull",
    "Report",
    "RuleState",
    "Welcome",
    "encode_message",
    "encode_message_bytes",
    "from_frame",
]

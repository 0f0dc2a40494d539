"""Typed messages: one frozen dataclass per op, validated where made, decoded from frames."""

from __future__ import annotations

import numpy as np
import pytest

from distkeras_async import errors
from distkeras_async.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from distkeras_async.wire.decoder import FrameDecoder
from distkeras_async.wire.frames import Frame
from distkeras_async.wire.messages import (
    MESSAGE_TYPES,
    Ack,
    Bye,
    Center,
    Challenge,
    Commit,
    CommitPull,
    Control,
    Error,
    Hello,
    Message,
    Pull,
    Report,
    RuleState,
    Welcome,
    encode_message_bytes,
    from_frame,
)
from distkeras_async.wire.schema import MAX_TEXT, Op, TensorSpec

NONCE = bytes(range(32))
IDS = {"worker": 3, "attempt": 1, "seq": 42}

EXAMPLES: list[Message] = [
    Challenge(NONCE),
    Hello(NONCE, bytes(32), **IDS),
    Welcome(
        NONCE,
        (TensorSpec("float32", (2, 3)), TensorSpec("float16", (4,))),
        "downpour",
        {"communication_window": 5, "flag": True},
        7,
        2,
        False,
        9,
        30.0,
        12,
    ),
    Pull(**IDS),
    Commit(np.arange(5, dtype=np.float32), 40, ((38, 1.0, {"loss": 0.5}),), **IDS),
    CommitPull(np.arange(5, dtype=np.float32), **IDS),
    Report({"loss": 0.5, "samples": 320.0}, ((0, 1.5, {"loss": 0.7}), (1, 2.0, {})), **IDS),
    Error(ErrorCode.RULE_FAILED, "the rule raised", **IDS),
    Bye(**IDS),
    Center(np.ones(5, np.float32), 12, duplicate=True),
    Ack(3),
    # The epoch a report closes, and the driver's control on both kinds of reply.
    Report({"loss": 0.4}, epoch=3, **IDS),
    Center(np.ones(5, np.float32), 13, control=Control(stop=True, learning_rate=0.0005)),
    Ack(4, control=Control(learning_rate=0.01)),
    Ack(5, control=Control(stop=True)),
    # A rule's state: any number of arrays, of any wire dtype; a welcome that announces one.
    RuleState((np.arange(5, dtype=np.float32), np.zeros((2, 2), np.int64)), **IDS),
    Welcome(
        NONCE, (TensorSpec("float32", (5,)),), "eamsgd", {}, 7, 2, False, 9, 0.0, 4, None, True
    ),
]


def test_every_op_has_one_message_type():
    assert set(MESSAGE_TYPES) == set(Op)
    assert {type(m).op for m in EXAMPLES} == set(Op)


def _decode(data: bytes) -> Message:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    frame = decoder.next_frame()
    assert frame is not None and decoder.next_frame() is None
    return from_frame(frame)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_bytes(message):
    got = _decode(encode_message_bytes(message))
    assert type(got) is type(message)
    assert (got.worker, got.attempt, got.seq) == (message.worker, message.attempt, message.seq)
    for name in message.__dataclass_fields__:
        expected, actual = getattr(message, name), getattr(got, name)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(actual, expected)
            assert actual.dtype == expected.dtype
        elif isinstance(expected, tuple) and expected and isinstance(expected[0], np.ndarray):
            assert len(actual) == len(expected), name
            for got_array, want in zip(actual, expected, strict=True):
                np.testing.assert_array_equal(got_array, want)
                assert got_array.dtype == want.dtype
        else:
            assert actual == expected, name


def test_a_reply_without_control_carries_no_control_fields():
    """A plain reply costs no header bytes for the control (the hot path's size)."""
    plain = encode_message_bytes(Ack(3))
    assert b"stop" not in plain and b"learning_rate" not in plain
    assert _decode(plain).control == Control()


def test_decoded_fields_are_typed():
    welcome = _decode(encode_message_bytes(EXAMPLES[2]))
    assert isinstance(welcome, Welcome)
    assert welcome.layout == (TensorSpec("float32", (2, 3)), TensorSpec("float16", (4,)))
    assert isinstance(welcome.reply_timeout, float)
    error = _decode(encode_message_bytes(EXAMPLES[7]))
    assert isinstance(error, Error) and error.code is ErrorCode.RULE_FAILED


@pytest.mark.parametrize(
    "make",
    [
        lambda: Challenge(b"short"),
        lambda: Hello(NONCE, b"x"),
        lambda: Error("not-a-code", "x"),  # type: ignore[arg-type]
        lambda: Error(ErrorCode.PROTOCOL, "x" * (MAX_TEXT + 1)),
        lambda: Commit([1.0, 2.0]),  # type: ignore[arg-type]
        lambda: Center("center", 1),  # type: ignore[arg-type]
        lambda: Pull(worker=-1),
        lambda: Ack(-3),
        lambda: Report({"loss": float("nan")}),
        lambda: Report({"loss": 0.1}, epoch=-1),
        lambda: Ack(1, control=Control(learning_rate=float("inf"))),
        lambda: Welcome(NONCE, (), "x", {"bad": [1, 2]}, 0, 1, False, 0, 1.0),
    ],
)
def test_invalid_messages_fail_where_they_are_made(make):
    with pytest.raises(LocalProtocolError):
        make()


def test_a_tensor_message_must_carry_one_vector_or_a_commit_its_scales():
    values, scales = np.ones(5, np.int8), np.ones(2, np.float32)
    commit = from_frame(Frame(Op.COMMIT, tensors=(values, scales)))
    assert isinstance(commit, Commit) and commit.scales is not None
    np.testing.assert_array_equal(commit.scales, scales)
    assert from_frame(commit.to_frame()).wire_tensors()[1].tolist() == [1.0, 1.0]
    frame = Frame(Op.COMMIT, tensors=(values, scales, scales))
    with pytest.raises(RemoteProtocolError, match="one flat vector, got 3"):
        from_frame(frame)


def test_a_long_error_keeps_its_start_and_its_end():
    reason = "start " + "x" * 10_000 + " the last line"
    error = Error.of(ErrorCode.RULE_FAILED, reason, worker=1)
    assert len(error.message) == MAX_TEXT
    assert error.message.startswith("start ") and error.message.endswith(" the last line")
    assert error.worker == 1
    assert Error.of(ErrorCode.LIMIT, "short").message == "short"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.AUTHENTICATION, errors.AuthenticationError),
        (ErrorCode.RULE_FAILED, errors.RuleFailedError),
        (ErrorCode.ROUND_FAILED, errors.RoundFailedError),
        (ErrorCode.WORKER_FAILED, errors.WorkerReportedError),
        (ErrorCode.LIMIT, errors.ServerError),
        (ErrorCode.PROTOCOL, errors.ServerError),
        (ErrorCode.BAD_UPDATE, errors.ServerError),
        (ErrorCode.INTERNAL, errors.ServerError),
    ],
)
def test_each_error_code_maps_to_its_exception(code, cls):
    error = errors.from_code(code, "why")
    assert type(error) is cls
    assert "why" in str(error)
    if isinstance(error, errors.ServerError):
        assert error.code is code
    if isinstance(error, errors.RunFailedError):
        assert error.code is code


def test_every_code_is_mapped():
    assert {type(errors.from_code(c, "")) for c in ErrorCode} <= {
        errors.AuthenticationError,
        errors.RuleFailedError,
        errors.RoundFailedError,
        errors.CheckpointError,
        errors.WorkerReportedError,
        errors.ServerError,
    }

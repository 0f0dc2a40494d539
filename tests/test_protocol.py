"""Tests of the sans-IO wire codec: round trips, the payload allocator hook, hostile input."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from distkeras_async.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from distkeras_async.wire.decoder import FrameDecoder
from distkeras_async.wire.frames import Frame, FrameHeader, encode, encode_bytes, parse_header
from distkeras_async.wire.schema import (
    DTYPES,
    FIELDS,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    MAX_TENSORS,
    PREFIX,
    PROTOCOL_VERSION,
    TENSOR_OPS,
    Op,
    TensorSpec,
)

# --------------------------------------------------------------------------- helpers

NONCE = bytes(range(32))
PROOF = bytes(range(100, 132))

VALID_FIELDS: dict[Op, dict[str, Any]] = {
    Op.CHALLENGE: {"nonce": NONCE},
    Op.HELLO: {"proof": PROOF, "nonce": NONCE},
    Op.WELCOME: {
        "proof": PROOF,
        "layout": [["float32", [2, 3]], ["int64", []], ["uint8", [0, 7]]],
        "algorithm": "downpour",
        "hyperparameters": {"lr": 0.01, "momentum": 0, "name": "x", "flag": True, "none": None},
        "version": 12,
        "num_workers": 4,
        "synchronous": False,
        "next_seq": 3,
        "reply_timeout": 2.5,
        "progress": 0,
    },
    Op.PULL: {},
    Op.COMMIT: {"steps": 40},
    Op.COMMIT_PULL: {},
    Op.REPORT: {
        "metrics": {"loss": 0.25, "step": 3, "acc": -1.5},
        "history": [[0, 1.5, {"loss": 0.3}], [1, 2.5, {}]],
    },
    Op.ERROR: {"code": "rule_failed", "message": "something went wrong: é ✓"},
    Op.BYE: {},
    Op.CENTER: {"version": 7},
    Op.ACK: {"version": 3, "duplicate": True},
    Op.STATE: {},
}

NON_TENSOR_OPS = [op for op in Op if op not in TENSOR_OPS]


def test_valid_fields_table_covers_every_op() -> None:
    assert set(VALID_FIELDS) == set(Op) == set(FIELDS)
    for op, fields in VALID_FIELDS.items():
        required = {name for name, (_, req) in FIELDS[op].items() if req}
        assert required <= set(fields) <= set(FIELDS[op])


def sample_tensors() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1234)
    return (
        rng.standard_normal((3, 4)).astype(np.float32),
        rng.standard_normal(5),  # float64
        rng.standard_normal((2, 1, 3)).astype(np.float16),
        rng.integers(-(2**31), 2**31 - 1, size=(4,), dtype=np.int32),
        rng.integers(-(2**62), 2**62, size=(2, 2), dtype=np.int64),
        rng.integers(0, 256, size=(7,), dtype=np.uint8),
        np.zeros((0, 3), np.float32),
        np.array(3.5, np.float64),  # 0-d
    )


def make_message(op: Op, **kwargs: Any) -> Frame:
    kwargs.setdefault("fields", VALID_FIELDS[op])
    if op in TENSOR_OPS:
        kwargs.setdefault("tensors", sample_tensors())
    kwargs.setdefault("worker", 3)
    kwargs.setdefault("attempt", 1)
    kwargs.setdefault("seq", 42)
    return Frame(op, **kwargs)


def assert_same_message(got: Frame | None, want: Frame) -> None:
    assert got is not None
    assert got.op is want.op
    assert (got.worker, got.attempt, got.seq) == (want.worker, want.attempt, want.seq)
    assert dict(got.fields) == dict(want.fields)
    assert len(got.tensors) == len(want.tensors)
    for g, tensor in zip(got.tensors, want.tensors, strict=True):
        w = np.asarray(tensor)
        assert isinstance(g, np.ndarray)
        assert g.dtype == w.dtype
        assert g.shape == w.shape
        # bit-identical, NaN payloads and signed zeros included
        assert g.tobytes() == np.ascontiguousarray(w).tobytes()


def frame(header: Any, payload: bytes = b"") -> bytes:
    """A frame built by hand from any msgpack-able header."""
    packed = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(len(packed)) + packed + payload


def raw_header(op: Op | str = "pull", **overrides: Any) -> dict[Any, Any]:
    header: dict[Any, Any] = {"v": PROTOCOL_VERSION, "op": str(op), "w": 0, "a": 0, "s": 0}
    header["t"] = []
    header["f"] = dict(VALID_FIELDS[Op(op)]) if str(op) in set(Op) else {}
    header.update(overrides)
    return header


def decode_all(data: bytes, decoder: FrameDecoder | None = None) -> list[Frame]:
    decoder = decoder or FrameDecoder()
    decoder.receive_data(data)
    return drain(decoder)


def drain(decoder: FrameDecoder) -> list[Frame]:
    out = []
    while (message := decoder.next_frame()) is not None:
        out.append(message)
    return out


def feed_buffered(decoder: FrameDecoder, data: bytes, chunk_sizes: Iterator[int]) -> None:
    """Feed through get_buffer()/buffer_updated(), as asyncio.BufferedProtocol does."""
    pos = 0
    while pos < len(data):
        buf = decoder.get_buffer()
        assert buf.nbytes > 0
        assert not buf.readonly
        n = min(buf.nbytes, next(chunk_sizes), len(data) - pos)
        buf[:n] = data[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n


def random_chunks(seed: int, low: int = 1, high: int = 50) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(low, high)


def assert_poisoned(decoder: FrameDecoder) -> None:
    valid = encode_bytes(make_message(Op.PULL))
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(valid)
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(b"\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.get_buffer()
    assert decoder.next_frame() is None


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("op", list(Op))
class TestRoundTrip:
    def test_whole(self, op: Op) -> None:
        message = make_message(op)
        data = encode_bytes(message)
        assert data == b"".join(bytes(b) for b in encode(message))
        (length,) = PREFIX.unpack_from(data)
        assert 0 < length <= MAX_HEADER_BYTES
        decoder = FrameDecoder()
        decoder.receive_data(data)
        assert not decoder.in_frame
        assert_same_message(decoder.next_frame(), message)
        assert decoder.next_frame() is None

    def test_byte_by_byte(self, op: Op) -> None:
        message = make_message(op)
        data = encode_bytes(message)
        decoder = FrameDecoder()
        for i in range(len(data)):
            assert decoder.next_frame() is None
            decoder.receive_data(data[i : i + 1])
            assert decoder.in_frame == (i < len(data) - 1)
        assert_same_message(decoder.next_frame(), message)
        assert decoder.next_frame() is None

    def test_memoryview_and_bytearray_input(self, op: Op) -> None:
        message = make_message(op)
        data = encode_bytes(message)
        decoder = FrameDecoder()
        decoder.receive_data(bytearray(data[:5]))
        decoder.receive_data(memoryview(data)[5:])
        assert_same_message(decoder.next_frame(), message)

    @pytest.mark.parametrize("second_op", [Op.PULL, Op.COMMIT, Op.REPORT])
    def test_trailing_second_message(self, op: Op, second_op: Op) -> None:
        first = make_message(op)
        second = make_message(second_op, worker=9, seq=43)
        one, two = encode_bytes(first), encode_bytes(second)
        for split in (1, 3, 4, 5, len(two) // 2, len(two) - 1):
            decoder = FrameDecoder()
            decoder.receive_data(one + two[:split])
            assert_same_message(decoder.next_frame(), first)
            assert decoder.next_frame() is None
            assert decoder.in_frame
            decoder.receive_data(two[split:])
            assert_same_message(decoder.next_frame(), second)
            assert decoder.next_frame() is None
        # both complete in a single chunk: both come out, in order
        got = decode_all(one + two + one)
        assert len(got) == 3
        assert_same_message(got[0], first)
        assert_same_message(got[1], second)
        assert_same_message(got[2], first)

    @pytest.mark.parametrize("seed", range(5))
    def test_buffered_protocol_random_chunks(self, op: Op, seed: int) -> None:
        messages = [make_message(op), make_message(Op.COMMIT, seq=1), make_message(op, seq=2)]
        data = b"".join(encode_bytes(m) for m in messages)
        decoder = FrameDecoder()
        feed_buffered(decoder, data, random_chunks(seed, 1, 97))
        got = drain(decoder)
        assert len(got) == len(messages)
        for g, w in zip(got, messages, strict=True):
            assert_same_message(g, w)

    def test_buffered_protocol_fills_whole_buffers(self, op: Op) -> None:
        message = make_message(op)
        data = encode_bytes(message) * 2
        decoder = FrameDecoder()
        feed_buffered(decoder, data, iter(lambda: 1 << 30, None))
        got = drain(decoder)
        assert len(got) == 2
        assert_same_message(got[0], message)
        assert_same_message(got[1], message)


def test_mixed_feeding_apis() -> None:
    messages = [make_message(op, seq=i) for i, op in enumerate(Op)]
    data = b"".join(encode_bytes(m) for m in messages)
    decoder = FrameDecoder()
    rng = random.Random(7)
    pos = 0
    while pos < len(data):
        n = min(rng.randint(1, 300), len(data) - pos)
        if rng.random() < 0.5:
            decoder.receive_data(data[pos : pos + n])
        else:
            feed_buffered(decoder, data[pos : pos + n], iter(lambda: 1 << 30, None))
        pos += n
    got = drain(decoder)
    assert [m.op for m in got] == list(Op)
    for g, w in zip(got, messages, strict=True):
        assert_same_message(g, w)


TENSOR_CASES: dict[str, tuple[np.ndarray, ...]] = {
    "float32_1d": (np.linspace(-1, 1, 11, dtype=np.float32),),
    "float64_3d": (np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7,),
    "float16": (np.array([0.5, -0.0, np.inf, -np.inf, 65504], np.float16),),
    "int32_extremes": (np.array([-(2**31), 2**31 - 1, 0, -1], np.int32),),
    "int64_extremes": (np.array([-(2**63), 2**63 - 1, 0], np.int64),),
    "uint8_all": (np.arange(256, dtype=np.uint8).reshape(16, 16),),
    "zero_size_only": (np.zeros((0,), np.float32),),
    "zero_size_2d": (np.zeros((4, 0), np.int64),),
    "zero_size_between": (
        np.ones(3, np.float32),
        np.zeros((2, 0, 5), np.float64),
        np.arange(5, dtype=np.uint8),
    ),
    "zero_size_last": (np.ones(3, np.float32), np.zeros(0, np.int32)),
    "scalar_0d": (np.array(7, np.int32),),
    "many": tuple(np.full((i % 4 + 1,), i, np.float32) for i in range(50)),
    "max_ndim": (np.ones((1,) * MAX_NDIM, np.float32),),
    "large": (np.random.default_rng(0).standard_normal(300_000).astype(np.float32),),
    "nan_payloads": (
        np.array([0x7FC00001, 0xFFC12345, 0x7F800001], np.uint32).view(np.float32),
        np.array([0x7FF8000000000001], np.uint64).view(np.float64),
    ),
    "longlong_and_intc": (
        np.arange(4, dtype=np.longlong),
        np.arange(4, dtype=np.intc),
    ),
    "readonly": (np.frombuffer(b"\x01\x02\x03\x04", np.uint8),),
}


@pytest.mark.parametrize("op", sorted(TENSOR_OPS))
@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_tensor_round_trip(op: Op, case: str) -> None:
    tensors = TENSOR_CASES[case]
    message = make_message(op, tensors=tensors)
    data = encode_bytes(message)
    got = decode_all(data)
    assert len(got) == 1
    assert_same_message(got[0], message)
    # and in chunks through the buffered API
    decoder = FrameDecoder()
    feed_buffered(decoder, data, random_chunks(len(data), 1, 4096))
    assert_same_message(decoder.next_frame(), message)


def test_decoded_dtypes_are_the_wire_dtypes() -> None:
    tensors = tuple(np.zeros(2, dtype) for dtype in DTYPES.values())
    (got,) = decode_all(encode_bytes(make_message(Op.COMMIT, tensors=tensors)))
    assert [t.dtype for t in got.tensors] == list(DTYPES.values())


def test_decoded_tensors_are_independent_between_messages() -> None:
    a = make_message(Op.COMMIT, tensors=(np.ones(4, np.float32),))
    b = make_message(Op.COMMIT, tensors=(np.full(4, 2, np.float32),))
    first, second = decode_all(encode_bytes(a) + encode_bytes(b))
    assert not np.shares_memory(first.tensors[0], second.tensors[0])
    assert first.tensors[0].tolist() == [1, 1, 1, 1]
    assert second.tensors[0].tolist() == [2, 2, 2, 2]


def test_default_ids_are_zero_when_absent() -> None:
    (got,) = decode_all(frame({"v": PROTOCOL_VERSION, "op": "pull"}))
    assert (got.op, got.worker, got.attempt, got.seq, dict(got.fields)) == (Op.PULL, 0, 0, 0, {})
    assert got.tensors == ()


def test_max_ids_round_trip() -> None:
    big = 2**63 - 1
    message = make_message(Op.BYE, worker=big, attempt=big, seq=big)
    assert_same_message(decode_all(encode_bytes(message))[0], message)


def test_optional_field_may_be_absent() -> None:
    message = make_message(Op.ACK, fields={"version": 0})
    (got,) = decode_all(encode_bytes(message))
    assert dict(got.fields) == {"version": 0}


# --------------------------------------------------------------------------- encoding


def test_encode_is_zero_copy_for_contiguous_tensors() -> None:
    tensors = (np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(5, dtype=np.int64))
    buffers = encode(make_message(Op.COMMIT, tensors=tensors))
    assert len(buffers) == 3
    header = bytes(buffers[0])
    (length,) = PREFIX.unpack_from(header)
    assert len(header) == PREFIX.size + length
    for buf, array in zip(buffers[1:], tensors, strict=True):
        assert isinstance(buf, memoryview)
        assert buf.nbytes == array.nbytes
        assert np.shares_memory(np.frombuffer(buf, np.uint8), array)


def test_encode_omits_zero_size_tensor_buffers() -> None:
    tensors = (np.zeros(0, np.float32), np.ones(2, np.float32), np.zeros((3, 0), np.uint8))
    buffers = encode(make_message(Op.CENTER, tensors=tensors))
    assert len(buffers) == 2
    assert bytes(buffers[1]) == np.ones(2, np.float32).tobytes()


def test_header_is_the_documented_msgpack_map() -> None:
    message = make_message(Op.CENTER, tensors=(np.zeros((2, 3), np.float16),))
    data = encode_bytes(message)
    (length,) = PREFIX.unpack_from(data)
    header = msgpack.unpackb(data[PREFIX.size : PREFIX.size + length], raw=False)
    assert header == {
        "v": PROTOCOL_VERSION,
        "op": "center",
        "w": 3,
        "a": 1,
        "s": 42,
        "t": [["float16", [2, 3]]],
        "f": {"version": 7},
    }
    assert len(data) == PREFIX.size + length + 12


NON_CONTIGUOUS: dict[str, Callable[[], np.ndarray]] = {
    "strided": lambda: np.arange(20, dtype=np.float32)[::2],
    "reversed": lambda: np.arange(10, dtype=np.int64)[::-1],
    "transposed": lambda: np.arange(12, dtype=np.float64).reshape(3, 4).T,
    "fortran": lambda: np.asfortranarray(np.arange(24, dtype=np.int32).reshape(2, 3, 4)),
    "column": lambda: np.arange(30, dtype=np.uint8).reshape(5, 6)[:, 2],
    "sliced_3d": lambda: np.arange(60, dtype=np.float16).reshape(3, 4, 5)[1:, ::2, 1::2],
    "broadcast": lambda: np.broadcast_to(np.arange(3, dtype=np.float32), (4, 3)),
}


@pytest.mark.parametrize("name", sorted(NON_CONTIGUOUS))
def test_non_contiguous_arrays_are_encoded_correctly(name: str) -> None:
    array = NON_CONTIGUOUS[name]()
    assert not array.flags.c_contiguous
    expected = array.copy()
    (got,) = decode_all(encode_bytes(make_message(Op.COMMIT, tensors=(array,))))
    (tensor,) = got.tensors
    assert tensor.shape == array.shape
    assert tensor.dtype == array.dtype
    np.testing.assert_array_equal(tensor, expected)
    np.testing.assert_array_equal(array, expected)  # the source is left alone


def test_non_array_tensor_is_converted() -> None:
    (got,) = decode_all(encode_bytes(make_message(Op.COMMIT, tensors=([[1.0, 2.0]],))))  # type: ignore[arg-type]
    assert got.tensors[0].dtype == np.float64
    assert got.tensors[0].tolist() == [[1.0, 2.0]]


def _header_too_large() -> Frame:
    return make_message(
        Op.WELCOME,
        fields={**VALID_FIELDS[Op.WELCOME], "hyperparameters": {"blob": "x" * MAX_HEADER_BYTES}},
    )


BAD_ENCODE: dict[str, Callable[[], Frame]] = {
    "op_not_enum": lambda: Frame("pull"),  # type: ignore[arg-type]
    "bad_field_value": lambda: Frame(Op.CHALLENGE, fields={"nonce": b"short"}),
    "nonce_as_str": lambda: Frame(Op.CHALLENGE, fields={"nonce": "x" * 32}),
    "missing_field": lambda: Frame(Op.HELLO, fields={"proof": PROOF}),
    "unknown_field": lambda: Frame(Op.PULL, fields={"extra": 1}),
    "unknown_field_on_full_op": lambda: Frame(Op.CENTER, fields={"version": 1, "x": 2}),
    "negative_worker": lambda: Frame(Op.PULL, worker=-1),
    "negative_attempt": lambda: Frame(Op.PULL, attempt=-5),
    "negative_seq": lambda: Frame(Op.PULL, seq=-1),
    "bool_worker": lambda: Frame(Op.PULL, worker=True),
    "float_seq": lambda: Frame(Op.PULL, seq=1.0),  # type: ignore[arg-type]
    "numpy_int_worker": lambda: Frame(Op.PULL, worker=np.int64(1)),  # type: ignore[arg-type]
    "huge_worker": lambda: Frame(Op.PULL, worker=2**63),
    "negative_version_field": lambda: Frame(
        Op.CENTER, fields={"version": -1}, tensors=(np.ones(1, np.float32),)
    ),
    "duplicate_not_bool": lambda: Frame(Op.ACK, fields={"version": 1, "duplicate": 1}),
    "nan_metric": lambda: Frame(Op.REPORT, fields={"metrics": {"loss": math.nan}}),
    "inf_timeout": lambda: make_message(
        Op.WELCOME, fields={**VALID_FIELDS[Op.WELCOME], "reply_timeout": math.inf}
    ),
    "long_error_message": lambda: Frame(
        Op.ERROR, fields={"code": "internal", "message": "x" * 4097}
    ),
    "bad_layout": lambda: make_message(
        Op.WELCOME, fields={**VALID_FIELDS[Op.WELCOME], "layout": [["object", [1]]]}
    ),
    "complex64": lambda: Frame(Op.COMMIT, tensors=(np.zeros(3, np.complex64),)),
    "object_array": lambda: Frame(Op.COMMIT, tensors=(np.array([1, "a"], dtype=object),)),
    "bool_array": lambda: Frame(Op.COMMIT, tensors=(np.zeros(3, bool),)),
    "uint32_array": lambda: Frame(Op.COMMIT, tensors=(np.zeros(3, np.uint32),)),
    "str_array": lambda: Frame(Op.COMMIT, tensors=(np.array(["ab"]),)),
    "big_endian": lambda: Frame(Op.COMMIT, tensors=(np.zeros(3, ">f4"),)),
    "structured": lambda: Frame(Op.COMMIT, tensors=(np.zeros(3, "f4,i4"),)),
    "one_bad_among_good": lambda: Frame(
        Op.COMMIT, tensors=(np.zeros(3, np.float32), np.zeros(2, np.complex128))
    ),
    "tensors_on_pull": lambda: Frame(Op.PULL, tensors=(np.zeros(1, np.float32),)),
    "no_tensor_on_commit": lambda: Frame(Op.COMMIT),
    "no_tensor_on_center": lambda: Frame(Op.CENTER, fields={"version": 1}),
    "too_many_tensors": lambda: Frame(
        Op.COMMIT, tensors=tuple(np.zeros(0, np.uint8) for _ in range(MAX_TENSORS + 1))
    ),
    "header_too_large": _header_too_large,
    "metric_int_beyond_64_bits": lambda: Frame(Op.REPORT, fields={"metrics": {"x": 10**30}}),
    "setting_int_beyond_64_bits": lambda: make_message(
        Op.WELCOME, fields={**VALID_FIELDS[Op.WELCOME], "hyperparameters": {"x": -(2**70)}}
    ),
    "surrogate_text": lambda: Frame(Op.ERROR, fields={"code": "internal", "message": "\ud800"}),
}


@pytest.mark.parametrize("name", sorted(BAD_ENCODE))
def test_encode_rejects_invalid_messages(name: str) -> None:
    message = BAD_ENCODE[name]()
    with pytest.raises(LocalProtocolError):
        encode(message)
    with pytest.raises(LocalProtocolError):
        encode_bytes(message)


def test_encode_accepts_exactly_max_tensors() -> None:
    tensors = tuple(np.zeros(0, np.uint8) for _ in range(MAX_TENSORS))
    message = Frame(Op.COMMIT, tensors=tensors)
    (got,) = decode_all(encode_bytes(message))
    assert len(got.tensors) == MAX_TENSORS


def test_tensor_spec_validation() -> None:
    spec = TensorSpec.of(np.zeros((2, 3), np.float64))
    assert spec == TensorSpec("float64", (2, 3))
    assert (spec.size, spec.nbytes, spec.to_wire()) == (6, 48, ["float64", [2, 3]])
    assert TensorSpec("uint8", ()).nbytes == 1
    with pytest.raises(LocalProtocolError):
        TensorSpec("complex64", (1,))
    with pytest.raises(LocalProtocolError):
        TensorSpec("float32", (-1,))
    with pytest.raises(LocalProtocolError):
        TensorSpec("float32", (1,) * (MAX_NDIM + 1))
    with pytest.raises(LocalProtocolError):
        TensorSpec.of(np.zeros(1, np.complex64))


# --------------------------------------------------------------------------- allocator hook


class RecordingAllocator:
    """Returns preallocated arrays (or None) and records every header it was given."""

    def __init__(self, arrays: list[np.ndarray | None]) -> None:
        self.arrays = list(arrays)
        self.headers: list[FrameHeader] = []

    def __call__(self, header: FrameHeader) -> memoryview | None:
        self.headers.append(header)
        array = self.arrays.pop(0)
        return None if array is None else memoryview(array)


@pytest.mark.parametrize("feed", ["whole", "bytes", "buffered"])
def test_allocator_receives_payload_in_place(feed: str) -> None:
    update = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32)
    target = np.zeros((5, 7), np.float32)
    allocate = RecordingAllocator([target])
    decoder = FrameDecoder(allocate=allocate)
    message = make_message(Op.COMMIT_PULL, tensors=(update,))
    data = encode_bytes(message)
    if feed == "whole":
        decoder.receive_data(data)
    elif feed == "bytes":
        for i in range(len(data)):
            decoder.receive_data(data[i : i + 1])
    else:
        feed_buffered(decoder, data, random_chunks(11, 1, 40))
    got = decoder.next_frame()
    assert_same_message(got, message)
    assert got is not None
    assert np.shares_memory(got.tensors[0], target)
    np.testing.assert_array_equal(target, update)
    (header,) = allocate.headers
    assert header.op is Op.COMMIT_PULL
    assert (header.worker, header.attempt, header.seq) == (3, 1, 42)
    assert header.specs == (TensorSpec("float32", (5, 7)),)
    assert header.payload_size == update.nbytes


def test_allocator_is_called_before_any_payload_byte() -> None:
    seen: list[tuple[bool, int | None]] = []
    decoder: FrameDecoder

    def allocate(header: FrameHeader) -> memoryview:
        pending = decoder.pending_header
        seen.append((decoder.in_frame, pending.payload_size if pending else None))
        return memoryview(bytearray(header.payload_size))

    decoder = FrameDecoder(allocate=allocate)
    message = make_message(Op.COMMIT, tensors=(np.arange(10, dtype=np.int64),))
    data = encode_bytes(message)
    header_end = len(data) - 80
    decoder.receive_data(data[:header_end])
    assert seen == [(True, 80)]
    assert decoder.pending_header is not None
    assert decoder.pending_header.payload_size == 80
    assert decoder.next_frame() is None
    decoder.receive_data(data[header_end:])
    assert_same_message(decoder.next_frame(), message)
    assert decoder.pending_header is None


def test_allocator_flat_byte_buffer_for_several_tensors() -> None:
    tensors = (np.arange(6, dtype=np.float64).reshape(2, 3), np.arange(4, dtype=np.uint8))
    backing = np.zeros(6 * 8 + 4, np.uint8)
    decoder = FrameDecoder(allocate=lambda h: memoryview(backing))
    (got,) = decode_all(encode_bytes(make_message(Op.CENTER, tensors=tensors)), decoder)
    assert all(np.shares_memory(t, backing) for t in got.tensors)
    np.testing.assert_array_equal(got.tensors[0], tensors[0])
    np.testing.assert_array_equal(got.tensors[1], tensors[1])


def test_allocator_not_called_without_payload() -> None:
    calls: list[FrameHeader] = []

    def allocate(header: FrameHeader) -> memoryview:
        calls.append(header)
        return memoryview(bytearray(header.payload_size))

    decoder = FrameDecoder(allocate=allocate)
    data = encode_bytes(make_message(Op.PULL)) + encode_bytes(
        make_message(Op.COMMIT, tensors=(np.zeros((0, 4), np.float32),))
    )
    got = decode_all(data, decoder)
    assert [m.op for m in got] == [Op.PULL, Op.COMMIT]
    assert got[1].tensors[0].shape == (0, 4)
    assert calls == []


@pytest.mark.parametrize("arrived", ["none", "part", "all"])
def test_allocator_none_waits_and_stages(arrived: str) -> None:
    update = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    target = np.zeros(1000, np.float32)
    allocate = RecordingAllocator([None, None])
    decoder = FrameDecoder(allocate=allocate)
    message = make_message(Op.COMMIT, tensors=(update,))
    data = encode_bytes(message)
    header_len = len(data) - update.nbytes
    cut = {"none": header_len, "part": header_len + 1234, "all": len(data)}[arrived]
    decoder.receive_data(data[:header_len])
    assert decoder.waiting_for_buffer
    assert len(allocate.headers) == 1
    # bytes that keep arriving are staged, in several pieces
    pos = header_len
    for step in (1, 7, 500, 1 << 20):
        end = min(pos + step, cut)
        decoder.receive_data(data[pos:end])
        pos = end
    assert decoder.waiting_for_buffer
    assert decoder.next_frame() is None
    assert decoder.pending_header is not None
    decoder.provide_payload_buffer(memoryview(target))
    assert not decoder.waiting_for_buffer
    if arrived != "all":
        assert decoder.next_frame() is None
        decoder.receive_data(data[cut:])
    got = decoder.next_frame()
    assert_same_message(got, message)
    assert got is not None
    assert np.shares_memory(got.tensors[0], target)
    np.testing.assert_array_equal(target, update)
    assert len(allocate.headers) == 1
    # the decoder goes on to the next frame normally
    second = make_message(Op.CENTER, tensors=(np.ones(3, np.float32),))
    decoder.receive_data(encode_bytes(second))
    assert decoder.waiting_for_buffer
    decoder.provide_payload_buffer(memoryview(bytearray(12)))
    decoder.receive_data(encode_bytes(make_message(Op.BYE)))
    got_second = drain(decoder)
    assert [m.op for m in got_second] == [Op.CENTER, Op.BYE]
    assert_same_message(got_second[0], second)


def test_allocator_none_with_buffered_protocol_and_large_payload() -> None:
    # more than one 64 KiB staging chunk, staged through get_buffer/buffer_updated
    update = np.random.default_rng(8).integers(0, 2**31 - 1, 100_000, dtype=np.int32)
    target = np.empty_like(update)
    decoder = FrameDecoder(allocate=lambda h: None)
    message = make_message(Op.CENTER, tensors=(update,))
    data = encode_bytes(message)
    feed_buffered(decoder, data, random_chunks(2, 1, 30_000))
    assert decoder.waiting_for_buffer
    decoder.provide_payload_buffer(memoryview(target))
    got = decoder.next_frame()
    assert_same_message(got, message)
    assert got is not None
    assert np.shares_memory(got.tensors[0], target)


def test_provide_payload_buffer_misuse_is_a_local_error() -> None:
    decoder = FrameDecoder(allocate=lambda h: None)
    with pytest.raises(LocalProtocolError):
        decoder.provide_payload_buffer(memoryview(bytearray(4)))
    data = encode_bytes(make_message(Op.COMMIT, tensors=(np.arange(4, dtype=np.float32),)))
    decoder.receive_data(data)
    assert decoder.waiting_for_buffer
    with pytest.raises(LocalProtocolError):
        decoder.provide_payload_buffer(memoryview(bytearray(15)))  # wrong size
    with pytest.raises(LocalProtocolError):
        decoder.provide_payload_buffer(memoryview(bytes(16)))  # read-only
    assert decoder.waiting_for_buffer
    decoder.provide_payload_buffer(memoryview(bytearray(16)))
    (got,) = drain(decoder)
    assert got.tensors[0].tolist() == [0, 1, 2, 3]


def test_pipelined_frame_while_waiting_for_buffer_is_decoded_afterwards() -> None:
    # While the allocator defers, a pipelined next frame is staged and decoded in order.
    decoder = FrameDecoder(allocate=lambda h: None)
    data = encode_bytes(make_message(Op.COMMIT, tensors=(np.arange(4, dtype=np.float32),)))
    decoder.receive_data(data + encode_bytes(make_message(Op.BYE)))
    assert decoder.waiting_for_buffer
    decoder.provide_payload_buffer(memoryview(bytearray(16)))
    assert [m.op for m in drain(decoder)] == [Op.COMMIT, Op.BYE]


def test_unbounded_bytes_while_waiting_for_buffer_are_rejected() -> None:
    decoder = FrameDecoder(allocate=lambda h: None)
    data = encode_bytes(make_message(Op.COMMIT, tensors=(np.arange(4, dtype=np.float32),)))
    with pytest.raises(RemoteProtocolError, match="too many bytes"):
        decoder.receive_data(data + bytes(2 * 1024 * 1024))
    assert_poisoned(decoder)


def test_allocator_raising_remote_error_poisons() -> None:
    def allocate(header: FrameHeader) -> memoryview:
        raise RemoteProtocolError("no tensors for you")

    decoder = FrameDecoder(allocate=allocate)
    with pytest.raises(RemoteProtocolError, match="no tensors for you"):
        decoder.receive_data(encode_bytes(make_message(Op.COMMIT)))
    assert decoder.next_frame() is None
    assert_poisoned(decoder)


def test_allocator_raising_remote_error_poisons_buffered() -> None:
    def allocate(header: FrameHeader) -> memoryview:
        raise RemoteProtocolError("refused")

    decoder = FrameDecoder(allocate=allocate)
    with pytest.raises(RemoteProtocolError):
        feed_buffered(decoder, encode_bytes(make_message(Op.CENTER)), random_chunks(1, 1, 9))
    assert_poisoned(decoder)


# --------------------------------------------------------------------------- bad input


def _deep(n: int) -> bytes:
    return b"\x91" * n + b"\xc0"


def _packed(header_bytes: bytes, payload: bytes = b"") -> bytes:
    return PREFIX.pack(len(header_bytes)) + header_bytes + payload


def _commit(**overrides: Any) -> bytes:
    header = raw_header("commit", t=[["float32", [2]]])
    header.update(overrides)
    return frame(header, b"\x00" * 8)


def _tensor(entry: Any, op: str = "commit") -> bytes:
    return frame(raw_header(op, t=[entry]), b"\x00" * 64)


BAD_FRAMES: dict[str, bytes] = {
    # the header is not msgpack
    "never_used_byte": _packed(b"\xc1"),
    "truncated_msgpack": _packed(b"\x92\x01"),
    "trailing_msgpack": _packed(msgpack.packb(raw_header()) + b"\x01"),
    "invalid_utf8": _packed(b"\x81\xa1v\xa2\xff\xfe"),
    "int_map_key": frame({1: 2}),
    "nil_map_key": _packed(b"\x81\xc0\x01"),
    "too_deep": _packed(_deep(3000)),
    "random_garbage": _packed(bytes(range(200, 256))),
    # the header is not a map
    "array": frame([1, "pull"]),
    "int": frame(1),
    "str": frame("pull"),
    "nil": frame(None),
    "bin": frame(b"\x00" * 8),
    # unknown op
    "op_unknown": frame(raw_header(op="nope")),
    "op_missing": frame({"v": PROTOCOL_VERSION}),
    "op_int": frame({"v": PROTOCOL_VERSION, "op": 4}),
    "op_bytes": frame({"v": PROTOCOL_VERSION, "op": b"pull"}),
    "op_list": frame({"v": PROTOCOL_VERSION, "op": ["pull"]}),
    "op_none": frame({"v": PROTOCOL_VERSION, "op": None}),
    "op_upper": frame({"v": PROTOCOL_VERSION, "op": "PULL"}),
    "op_enum_repr": frame({"v": PROTOCOL_VERSION, "op": "Op.PULL"}),
    # protocol version
    "version_next": frame(raw_header(v=PROTOCOL_VERSION + 1)),
    "version_1": frame(raw_header(v=1)),
    "version_0": frame(raw_header(v=0)),
    "version_negative": frame(raw_header(v=-1)),
    "version_str": frame(raw_header(v=str(PROTOCOL_VERSION))),
    "version_true": frame(raw_header(v=True)),
    "version_float": frame(raw_header(v=float(PROTOCOL_VERSION))),
    "version_none": frame(raw_header(v=None)),
    "version_list": frame(raw_header(v=[PROTOCOL_VERSION])),
    "version_missing": frame({"op": "pull"}),
    # extra header keys
    "extra_key": frame(raw_header(x=1)),
    "extra_bytes_key": frame({**raw_header(), b"v": PROTOCOL_VERSION}),
    "extra_key_only_nil": frame(raw_header(z=None)),
    # fields
    "fields_not_map": frame(raw_header(f=[])),
    "fields_str": frame(raw_header(f="x")),
    "fields_nil": frame(raw_header(f=None)),
    "missing_nonce": frame(raw_header("challenge", f={})),
    "missing_proof": frame(raw_header("hello", f={"nonce": NONCE})),
    "nonce_short": frame(raw_header("challenge", f={"nonce": NONCE[:31]})),
    "nonce_long": frame(raw_header("challenge", f={"nonce": NONCE + b"x"})),
    "nonce_str": frame(raw_header("challenge", f={"nonce": "a" * 32})),
    "unexpected_field": frame(raw_header("pull", f={"x": 1})),
    "unexpected_bytes_field": frame(raw_header("bye", f={b"x": 1})),
    "unexpected_field_center": _commit(op="center", f={"version": 1, "extra": 0}),
    "version_field_negative": _commit(op="center", f={"version": -1}),
    "version_field_bool": _commit(op="center", f={"version": True}),
    "version_field_float": _commit(op="center", f={"version": 1.0}),
    "version_field_missing": _commit(op="center", f={}),
    "duplicate_int": frame(raw_header("ack", f={"version": 1, "duplicate": 1})),
    "duplicate_nil": frame(raw_header("ack", f={"version": 1, "duplicate": None})),
    "message_too_long": frame(raw_header("error", f={"message": "x" * 4097})),
    "message_bytes": frame(raw_header("error", f={"message": b"x"})),
    "metrics_not_map": frame(raw_header("report", f={"metrics": [1]})),
    "metrics_str_value": frame(raw_header("report", f={"metrics": {"a": "1"}})),
    "metrics_bool_value": frame(raw_header("report", f={"metrics": {"a": True}})),
    "metrics_nan": frame(raw_header("report", f={"metrics": {"a": math.nan}})),
    "metrics_inf": frame(raw_header("report", f={"metrics": {"a": -math.inf}})),
    "metrics_bytes_key": frame(raw_header("report", f={"metrics": {b"a": 1}})),
    "metrics_long_key": frame(raw_header("report", f={"metrics": {"a" * 129: 1}})),
    "metrics_too_many": frame(raw_header("report", f={"metrics": {str(i): i for i in range(257)}})),
    "welcome_sync_int": frame(
        raw_header("welcome", f={**VALID_FIELDS[Op.WELCOME], "synchronous": 1})
    ),
    "welcome_timeout_nan": frame(
        raw_header("welcome", f={**VALID_FIELDS[Op.WELCOME], "reply_timeout": math.nan})
    ),
    "welcome_timeout_str": frame(
        raw_header("welcome", f={**VALID_FIELDS[Op.WELCOME], "reply_timeout": "1"})
    ),
    "welcome_settings_list": frame(
        raw_header("welcome", f={**VALID_FIELDS[Op.WELCOME], "hyperparameters": {"x": [1]}})
    ),
    "welcome_layout_bad_dtype": frame(
        raw_header("welcome", f={**VALID_FIELDS[Op.WELCOME], "layout": [["object", [1]]]})
    ),
    "welcome_layout_not_list": frame(
        raw_header("welcome", f={**VALID_FIELDS[Op.WELCOME], "layout": {"a": 1}})
    ),
    "welcome_layout_huge_zero_size": frame(
        raw_header(
            "welcome", f={**VALID_FIELDS[Op.WELCOME], "layout": [["float64", [0, 2**62, 2**62]]]}
        )
    ),
    "welcome_missing_algorithm": frame(
        raw_header(
            "welcome", f={k: v for k, v in VALID_FIELDS[Op.WELCOME].items() if k != "algorithm"}
        )
    ),
    "welcome_num_workers_huge": frame(
        raw_header("welcome", f={**VALID_FIELDS[Op.WELCOME], "num_workers": 2**64 - 1})
    ),
    # ids
    "worker_negative": frame(raw_header(w=-1)),
    "attempt_bool": frame(raw_header(a=True)),
    "seq_false": frame(raw_header(s=False)),
    "seq_huge": frame(raw_header(s=2**63)),
    "worker_max_uint64": frame(raw_header(w=2**64 - 1)),
    "worker_float": frame(raw_header(w=1.0)),
    "worker_str": frame(raw_header(w="1")),
    "worker_nil": frame(raw_header(w=None)),
    "attempt_min_int64": frame(raw_header(a=-(2**63))),
    # tensor entries
    "tensors_not_list": _commit(t={"float32": [2]}),
    "tensors_str": _commit(t="float32"),
    "tensors_nil": _commit(t=None),
    "entry_str": _tensor("float32"),
    "entry_short": _tensor(["float32"]),
    "entry_long": _tensor(["float32", [2], 0]),
    "entry_map": _tensor({"float32": [2]}),
    "entry_empty": _tensor([]),
    "dtype_int": _tensor([5, [2]]),
    "dtype_bytes": _tensor([b"float32", [2]]),
    "dtype_nil": _tensor([None, [2]]),
    "shape_int": _tensor(["float32", 2]),
    "shape_str": _tensor(["float32", "2"]),
    "shape_map": _tensor(["float32", {"a": 2}]),
    "shape_negative": _tensor(["float32", [-1]]),
    "shape_float": _tensor(["float32", [1.5]]),
    "shape_float_integral": _tensor(["float32", [2.0]]),
    "shape_bool": _tensor(["float32", [True]]),
    "shape_str_dim": _tensor(["float32", ["2"]]),
    "shape_nil_dim": _tensor(["float32", [None]]),
    "shape_nested": _tensor(["float32", [[2]]]),
    "shape_dim_too_big": _tensor(["uint8", [2**63]]),
    "too_many_dims": _tensor(["float32", [1] * (MAX_NDIM + 1)]),
    "huge_zero_size_shape": _tensor(["float64", [0, 2**62, 2**62]]),
    "huge_zero_size_shape_2": _tensor(["float64", [2**40, 0, 2**40]]),
    "zero_size_shape_bytes_overflow": _tensor(["float64", [0, 2**60]]),
    # dtypes
    "dtype_object": _tensor(["object", [2]]),
    "dtype_O": _tensor(["O", [2]]),
    "dtype_complex64": _tensor(["complex64", [2]]),
    "dtype_complex128": _tensor(["complex128", [2]]),
    "dtype_float128": _tensor(["float128", [2]]),
    "dtype_bool": _tensor(["bool", [2]]),
    "dtype_typestr": _tensor(["<f4", [2]]),
    "dtype_char": _tensor(["f", [2]]),
    "dtype_uint32": _tensor(["uint32", [2]]),
    "dtype_spaces": _tensor([" float32", [2]]),
    "dtype_upper": _tensor(["FLOAT32", [2]]),
    "dtype_empty": _tensor(["", [2]]),
    "dtype_structured": _tensor(["f4,i4", [2]]),
    "dtype_unicode": _tensor(["U8", [2]]),
    "dtype_void": _tensor(["V8", [2]]),
    # tensor count
    "too_many_tensors": frame(raw_header("commit", t=[["uint8", [0]]] * (MAX_TENSORS + 1))),
    "commit_without_tensor": frame(raw_header("commit")),
    "commit_pull_without_tensor": frame(raw_header("commit_pull")),
    "center_without_tensor": frame(raw_header("center")),
    "commit_t_missing": frame({"v": PROTOCOL_VERSION, "op": "commit"}),
    # framing
    "zero_header_length": b"\x00\x00\x00\x00",
    "zero_header_length_then_more": b"\x00\x00\x00\x00" + frame(raw_header()),
    "header_length_over_limit": PREFIX.pack(MAX_HEADER_BYTES + 1) + b"\x80",
    "header_length_max_u32": b"\xff\xff\xff\xff",
}
# tensors on every op that must not carry them (with a real payload, and with an empty one)
for _op in NON_TENSOR_OPS:
    BAD_FRAMES[f"tensors_on_{_op.value}"] = frame(
        raw_header(_op, t=[["float32", [2]]]), b"\x00" * 8
    )
    BAD_FRAMES[f"empty_tensor_on_{_op.value}"] = frame(raw_header(_op, t=[["float32", [0]]]))


def test_bad_frames_are_valid_msgpack_where_intended() -> None:
    # Sanity check of the table: the field/op cases are rejected for the intended reason,
    # i.e. they are well-formed frames with a decodable header.
    for name in ("op_unknown", "extra_key", "shape_negative", "tensors_on_pull"):
        data = BAD_FRAMES[name]
        (length,) = PREFIX.unpack_from(data)
        assert isinstance(msgpack.unpackb(data[4 : 4 + length], raw=False), dict)


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_input_raises_remote_error_and_poisons(name: str) -> None:
    data = BAD_FRAMES[name]
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(data)
    assert decoder.next_frame() is None
    assert_poisoned(decoder)


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_input_after_a_good_message(name: str) -> None:
    good = make_message(Op.REPORT)
    data = encode_bytes(good) + BAD_FRAMES[name]
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        feed_buffered(decoder, data, random_chunks(len(data), 1, 64))
    # the message before the bad frame was complete and is still delivered
    assert_same_message(decoder.next_frame(), good)
    assert_poisoned(decoder)


@pytest.mark.parametrize(
    "name",
    ["version_str", "op_unknown", "extra_key", "shape_negative", "dtype_O", "tensors_on_pull"],
)
def test_bad_input_byte_by_byte(name: str) -> None:
    data = BAD_FRAMES[name]
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        for i in range(len(data)):
            decoder.receive_data(data[i : i + 1])
    assert_poisoned(decoder)


def test_parse_header_directly() -> None:
    header = parse_header(msgpack.packb(raw_header("commit", t=[["int32", [3, 2]]])), 1 << 20)
    assert header.op is Op.COMMIT
    assert header.specs == (TensorSpec("int32", (3, 2)),)
    assert header.payload_size == 24
    with pytest.raises(RemoteProtocolError):
        parse_header(msgpack.packb(raw_header("commit", t=[["int32", [3, 2]]])), 23)
    with pytest.raises(RemoteProtocolError):
        parse_header(b"", 1 << 20)


def test_header_length_limit_is_configurable() -> None:
    data = encode_bytes(make_message(Op.REPORT))
    (length,) = PREFIX.unpack_from(data)
    decoder = FrameDecoder(max_header_bytes=length)
    assert_same_message(decode_all(data, decoder)[0], make_message(Op.REPORT))
    decoder = FrameDecoder(max_header_bytes=length - 1)
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(data[:4])  # fails on the prefix alone
    assert_poisoned(decoder)


def test_header_of_exactly_the_limit_is_accepted() -> None:
    def welcome(n: int) -> Frame:
        fields = {**VALID_FIELDS[Op.WELCOME], "hyperparameters": {"blob": "x" * n}}
        return make_message(Op.WELCOME, fields=fields)

    n = MAX_HEADER_BYTES - 400
    while PREFIX.unpack_from(encode_bytes(welcome(n)))[0] < MAX_HEADER_BYTES:
        n += 1
    message = welcome(n)
    data = encode_bytes(message)
    assert PREFIX.unpack_from(data)[0] == MAX_HEADER_BYTES
    assert_same_message(decode_all(data)[0], message)
    with pytest.raises(LocalProtocolError):
        encode(welcome(n + 1))
    # the same header, one byte over the limit of a stricter decoder
    decoder = FrameDecoder(max_header_bytes=MAX_HEADER_BYTES - 1)
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(data)
    assert_poisoned(decoder)


class CountingAllocator:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, header: FrameHeader) -> memoryview:
        self.calls += 1
        return memoryview(bytearray(header.payload_size))


@pytest.mark.parametrize(
    "specs",
    [
        [["float32", [257]]],  # 1028 bytes > 1024
        [["uint8", [1025]]],
        [["float64", [100]], ["uint8", [225]]],  # 800 + 225
        [["float32", [2**62, 2**62]]],  # way beyond, and beyond 64 bits
        [["int64", [2**63 - 1]]],
        [["uint8", [2**20]] for _ in range(40)],
    ],
)
def test_payload_over_limit_fails_before_allocation(specs: list[Any]) -> None:
    allocate = CountingAllocator()
    decoder = FrameDecoder(max_payload_bytes=1024, allocate=allocate)
    data = frame(raw_header("commit", t=specs))  # header only: the limit is checked on it
    with pytest.raises(RemoteProtocolError, match=r"exceeds the limit|too large"):
        decoder.receive_data(data)
    assert allocate.calls == 0
    assert_poisoned(decoder)
    assert allocate.calls == 0


def test_payload_at_limit_is_accepted() -> None:
    allocate = CountingAllocator()
    decoder = FrameDecoder(max_payload_bytes=1024, allocate=allocate)
    message = make_message(Op.COMMIT, tensors=(np.ones(256, np.float32),))
    (got,) = decode_all(encode_bytes(message), decoder)
    assert_same_message(got, message)
    assert allocate.calls == 1


@pytest.mark.parametrize("op", [Op.COMMIT, Op.WELCOME, Op.PULL, Op.CENTER])
def test_truncated_frame_yields_nothing(op: Op) -> None:
    data = encode_bytes(make_message(op))
    for cut in range(len(data)):
        decoder = FrameDecoder()
        decoder.receive_data(data[:cut])
        assert decoder.next_frame() is None
        assert decoder.in_frame == (cut > 0)
        # ... and the rest completes it
        decoder.receive_data(data[cut:])
        assert decoder.next_frame() is not None


def test_errors_are_protocol_errors() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)


def test_max_ndim_and_max_tensors_are_accepted_on_the_wire() -> None:
    data = frame(raw_header("commit", t=[["uint8", [1] * MAX_NDIM]] + [["uint8", [0]]] * 10))
    (got,) = decode_all(data + b"\x07")
    assert got.tensors[0].shape == (1,) * MAX_NDIM
    assert got.tensors[0].item() == 7
    data = frame(raw_header("commit", t=[["uint8", [0]]] * MAX_TENSORS))
    (got,) = decode_all(data)
    assert len(got.tensors) == MAX_TENSORS


def test_large_zero_size_shape_within_numpy_limits_is_accepted() -> None:
    (got,) = decode_all(frame(raw_header("commit", t=[["float64", [0, 2**59]]])))
    assert got.tensors[0].shape == (0, 2**59)


# --------------------------------------------------------------------------- fuzzing


def feed_fuzz(data: bytes, chunk: int, buffered: bool) -> list[Frame]:
    """Feed hostile bytes; only messages or RemoteProtocolError may come out."""
    decoder = FrameDecoder(max_payload_bytes=1 << 20)
    try:
        if buffered:
            feed_buffered(decoder, data, iter(lambda: chunk, None))
        else:
            for start in range(0, len(data), chunk):
                decoder.receive_data(data[start : start + chunk])
    except RemoteProtocolError:
        messages = drain(decoder)
        assert_poisoned(decoder)
        return messages
    messages = drain(decoder)
    for message in messages:
        assert isinstance(message.op, Op)
        assert all(t.dtype in DTYPES.values() for t in message.tensors)
        assert (message.op in TENSOR_OPS) == bool(message.tensors)
    return messages


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=40)
    | st.sampled_from([op.value for op in Op])
    | st.sampled_from([*DTYPES, "object", "O", "complex64"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

header_keys = st.sampled_from(["v", "op", "w", "a", "s", "t", "f", "x"])

plausible_headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(1) | msgpack_values,
        "op": st.sampled_from([op.value for op in Op]) | msgpack_values,
        "w": st.integers(-2, 2**64 - 1) | msgpack_values,
        "a": st.integers(0, 5),
        "s": st.integers(0, 5),
        "t": st.lists(
            st.tuples(
                st.sampled_from([*DTYPES, "O"]),
                st.lists(st.integers(-1, 2**63), max_size=4),
            ).map(list)
            | msgpack_values,
            max_size=3,
        )
        | msgpack_values,
        "f": st.dictionaries(
            st.sampled_from(["nonce", "proof", "version", "metrics", "message", "duplicate"]),
            msgpack_values | st.binary(min_size=32, max_size=32),
            max_size=3,
        )
        | msgpack_values,
        "x": msgpack_values,
    },
)

hostile_bytes = (
    st.binary(max_size=300)
    | st.builds(
        lambda h, rest: PREFIX.pack(len(h)) + h + rest,
        st.binary(max_size=80),
        st.binary(max_size=80),
    )
    | st.builds(lambda h, rest: frame(h) + rest, plausible_headers, st.binary(max_size=200))
    | st.builds(lambda v, rest: frame(v) + rest, msgpack_values, st.binary(max_size=20))
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.timeout(60)
@FUZZ
@given(data=hostile_bytes, chunk=st.integers(1, 400), buffered=st.booleans())
def test_fuzz_arbitrary_bytes(data: bytes, chunk: int, buffered: bool) -> None:
    feed_fuzz(data, chunk, buffered)


@st.composite
def valid_commit_frames(draw: st.DrawFn) -> bytes:
    tensors = draw(
        st.lists(
            hnp.arrays(
                st.sampled_from([np.float32, np.float64, np.int32, np.uint8]),
                hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
            ),
            min_size=1,
            max_size=3,
        )
    )
    op = draw(st.sampled_from(sorted(TENSOR_OPS)))
    return encode_bytes(Frame(op, 1, 2, 3, VALID_FIELDS[op], tuple(tensors))) + encode_bytes(
        make_message(Op.ACK)
    )


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "set"]),
    st.integers(0, 10_000),
    st.integers(0, 255),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, index, value in mutations:
        if not buf:
            break
        i = index % len(buf)
        if kind == "flip":
            buf[i] ^= 1 << (value % 8)
        elif kind == "insert":
            buf.insert(i, value)
        elif kind == "delete":
            del buf[i]
        else:
            buf[i] = value
    return bytes(buf)


@pytest.mark.timeout(60)
@FUZZ
@given(
    data=valid_commit_frames(),
    mutations=st.lists(mutation, min_size=1, max_size=6),
    chunk=st.integers(1, 200),
    buffered=st.booleans(),
)
def test_fuzz_mutated_frames(
    data: bytes, mutations: list[tuple[str, int, int]], chunk: int, buffered: bool
) -> None:
    feed_fuzz(mutate(data, mutations), chunk, buffered)


@pytest.mark.timeout(60)
@FUZZ
@given(data=valid_commit_frames(), cut=st.integers(0, 10_000))
def test_fuzz_truncated_frames(data: bytes, cut: int) -> None:
    first_len = PREFIX.size + PREFIX.unpack_from(data)[0]
    cut = min(cut % len(data), first_len - 1)  # stops inside the first frame's header
    decoder = FrameDecoder()
    decoder.receive_data(data[:cut])
    assert decoder.next_frame() is None


# strategies for valid fields, op by op
numbers = st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
ids = st.integers(0, 2**63 - 1)
nonces = st.binary(min_size=32, max_size=32)
texts = st.text(max_size=40)
scalars = st.none() | st.booleans() | texts | numbers
layouts = st.lists(
    st.tuples(st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 1000), max_size=4)).map(
        lambda p: [p[0], p[1]]
    ),
    max_size=5,
)

FIELD_STRATEGIES: dict[Op, st.SearchStrategy[dict[str, Any]]] = {
    Op.CHALLENGE: st.fixed_dictionaries({"nonce": nonces}),
    Op.HELLO: st.fixed_dictionaries({"proof": nonces, "nonce": nonces}),
    Op.WELCOME: st.fixed_dictionaries(
        {
            "proof": nonces,
            "layout": layouts,
            "algorithm": texts,
            "hyperparameters": st.dictionaries(st.text(max_size=20), scalars, max_size=5),
            "version": ids,
            "num_workers": ids,
            "synchronous": st.booleans(),
            "next_seq": ids,
            "reply_timeout": numbers,
            "progress": ids,
        }
    ),
    Op.PULL: st.just({}),
    Op.COMMIT: st.fixed_dictionaries({}, optional={"steps": ids}),
    Op.COMMIT_PULL: st.fixed_dictionaries({}, optional={"steps": ids}),
    Op.REPORT: st.fixed_dictionaries(
        {"metrics": st.dictionaries(st.text(max_size=20), numbers, max_size=5)},
        optional={
            "history": st.lists(
                st.tuples(
                    ids, numbers, st.dictionaries(st.text(max_size=20), numbers, max_size=3)
                ).map(list),
                max_size=5,
            )
        },
    ),
    Op.ERROR: st.fixed_dictionaries(
        {"code": st.sampled_from([str(c) for c in ErrorCode]), "message": texts}
    ),
    Op.BYE: st.just({}),
    Op.CENTER: st.fixed_dictionaries({"version": ids}),
    Op.ACK: st.fixed_dictionaries({"version": ids}, optional={"duplicate": st.booleans()}),
    Op.STATE: st.just({}),
}

tensor_arrays = hnp.arrays(
    st.sampled_from([np.dtype("<f4"), np.dtype("<f8"), np.dtype("<i4")]),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)


@st.composite
def valid_messages(draw: st.DrawFn) -> Frame:
    op = draw(st.sampled_from(list(Op)))
    tensors: tuple[np.ndarray, ...] = ()
    if op in TENSOR_OPS:
        tensors = tuple(draw(st.lists(tensor_arrays, min_size=1, max_size=4)))
    return Frame(op, draw(ids), draw(ids), draw(ids), draw(FIELD_STRATEGIES[op]), tensors)


@pytest.mark.timeout(60)
@FUZZ
@given(
    messages=st.lists(valid_messages(), min_size=1, max_size=3),
    chunk=st.integers(1, 500),
    buffered=st.booleans(),
)
def test_fuzz_valid_messages_round_trip(messages: list[Frame], chunk: int, buffered: bool) -> None:
    data = b"".join(encode_bytes(m) for m in messages)
    decoder = FrameDecoder()
    if buffered:
        feed_buffered(decoder, data, iter(lambda: chunk, None))
    else:
        for start in range(0, len(data), chunk):
            decoder.receive_data(data[start : start + chunk])
    got = drain(decoder)
    assert len(got) == len(messages)
    for g, w in zip(got, messages, strict=True):
        assert_same_message(g, w)
    assert not decoder.in_frame


def test_get_buffer_again_without_an_update_while_waiting() -> None:
    # uvloop's TLS transport may ask for a buffer, decrypt nothing, and ask again; or the
    # payload buffer may come while such an unreported buffer is out.
    update = np.arange(50_000, dtype=np.float32)
    message = make_message(Op.COMMIT, tensors=(update,))
    data = encode_bytes(message)
    for provide_while_out in (False, True):
        decoder = FrameDecoder(allocate=lambda h: None)
        decoder.receive_data(data[:1000])
        assert decoder.waiting_for_buffer
        first = decoder.get_buffer()
        again = decoder.get_buffer()  # nothing reported in between
        assert again.nbytes == first.nbytes
        again[:500] = data[1000:1500]
        decoder.buffer_updated(500)
        decoder.get_buffer()
        decoder.buffer_updated(0)
        decoder.get_buffer()  # left unreported
        if not provide_while_out:
            decoder.buffer_updated(0)
        target = np.empty_like(update)
        decoder.provide_payload_buffer(memoryview(target))
        decoder.receive_data(data[1500:])
        got = decoder.next_frame()
        assert got is not None
        assert_same_message(got, message)
        np.testing.assert_array_equal(target, update)

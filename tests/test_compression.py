"""Compressed commits: the codecs, error feedback, and the server's side of the wire."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
from conftest import handshake

from distkeras_async import algorithm as contract
from distkeras_async import registry
from distkeras_async.errors import HyperparameterError, ServerError
from distkeras_async.wire import compression
from distkeras_async.wire.compression import ErrorFeedback, commit_bytes, decode
from distkeras_async.wire.frames import Frame
from distkeras_async.wire.schema import Op

SIZES = [6, 4]  # the conftest server's model: (2, 3) + (4,)
COMPRESSED = ["float16", "bfloat16", "int8"]


def updates(count: int, sizes: list[int], scale: float = 1e-3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(rng.normal(size=sum(sizes)) * scale).astype(np.float32) for _ in range(count)]


def test_the_contract_and_the_codecs_name_the_same_dtypes():
    assert contract.COMMIT_DTYPES == compression.COMMIT_DTYPES


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_error_feedback_delivers_the_whole_sum_but_the_last_rounding(dtype):
    sizes = [1000, 10, 30_000, 3]
    encoder = ErrorFeedback(dtype, sizes)
    sent = np.zeros(sum(sizes), np.float64)
    received = np.zeros(sum(sizes), np.float64)
    decoded = np.empty(sum(sizes), np.float32)
    for update in updates(40, sizes):
        sent += update
        decode(dtype, encoder.encode(update), sizes, decoded)
        received += decoded
    # Every update arrived but what the last rounding kept back, which the worker holds.
    np.testing.assert_allclose(received + encoder.residual, sent, rtol=0, atol=1e-8)
    # And that is small: below one unit of the dtype's resolution at the updates' size.
    assert np.abs(encoder.residual).max() < 1e-4


def reference_encode(dtype: str, corrected: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """The wire tensors of ``corrected`` computed over whole arrays with numpy's own casts."""
    if dtype == "float16":
        return [np.clip(corrected, -65504, 65504).astype(np.float16).view(np.uint16)]
    if dtype == "bfloat16":
        return [corrected.astype(ml_dtypes.bfloat16).view(np.uint16)]
    values, scales = np.zeros(corrected.size, np.int8), np.zeros(len(sizes), np.float32)
    bounds = np.cumsum([0, *sizes])
    for index, (start, end) in enumerate(itertools.pairwise(bounds)):
        peak = float(np.abs(corrected[start:end]).max())
        if peak and 1.0 / (peak / 127) <= float(np.finfo(np.float32).max):
            scales[index] = peak / 127
            inverse = np.float32(1.0 / (peak / 127))
            values[start:end] = np.rint(corrected[start:end] * inverse)
    return [values, scales]


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_the_blockwise_encoders_match_whole_array_numpy_bit_for_bit(dtype):
    # Tensors smaller than, equal to and spanning several of the encoder's blocks, one all
    # zero and one so small that 1 / scale overflows float32 (sent as zeros, kept whole).
    block = compression._BLOCK
    sizes = [3, block, 2 * block + 5, 1000, 77, 10]
    rng = np.random.default_rng(3)
    encoder = ErrorFeedback(dtype, sizes)
    for _ in range(3):
        update = (rng.normal(size=sum(sizes)) * 1e-3).astype(np.float32)
        update[3 + block : 3 + block + 100] *= 1e-4  # half subnormals for float16
        update[-1087:-1010] = 0.0
        update[-10:] = np.float32(1e-40)
        corrected = update + encoder.residual
        expected = reference_encode(dtype, corrected, sizes)
        wire = encoder.encode(update)
        for got, want in zip(wire, expected, strict=True):
            np.testing.assert_array_equal(got.view(want.dtype), want)
        decoded = np.empty_like(corrected)
        decode(dtype, wire, sizes, decoded)
        np.testing.assert_array_equal(encoder.residual, corrected - decoded)
    if dtype == "int8":
        assert wire[1][-1] == 0 and not wire[0][-10:].any()
        assert np.all(encoder.residual[-10:] > 0)  # the tiny tensor waits in the residual


def test_float32_commits_travel_as_they_are():
    encoder = ErrorFeedback("float32", SIZES)
    (update,) = updates(1, SIZES)
    (sent,) = encoder.encode(update)
    assert sent is update and not encoder.residual.any()


@pytest.mark.parametrize(
    ("dtype", "ratio"), [("float32", 1.0), ("float16", 0.5), ("bfloat16", 0.5), ("int8", 0.25)]
)
def test_commit_bytes_are_halved_or_quartered(dtype, ratio):
    sizes = [1_000_000, 1000, 10]
    full = commit_bytes("float32", sizes)
    # int8 adds one float32 scale per tensor.
    assert commit_bytes(dtype, sizes) == full * ratio + (4 * len(sizes) if dtype == "int8" else 0)


def test_bfloat16_rounds_to_nearest_even_as_ml_dtypes_does():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        # (-0.0 becomes +0.0 once the zero residual is added; the value is the same.)
        [rng.normal(size=50_000) * 1e3, rng.normal(size=50_000) * 1e-30, [0.0, 1e-40, 3e38]]
    ).astype(np.float32)
    (bits,) = ErrorFeedback("bfloat16", [x.size]).encode(x)
    np.testing.assert_array_equal(bits, x.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_float16_clips_instead_of_overflowing():
    x = np.array([1e6, -1e6, 1.0], np.float32)
    encoder = ErrorFeedback("float16", [3])
    (half,) = encoder.encode(x)
    assert np.isfinite(half).all() and half[0] == 65504
    # What did not fit is kept for the next commits, not lost.
    np.testing.assert_allclose(encoder.residual[:2], [1e6 - 65504, -(1e6 - 65504)])


def test_int8_scales_each_tensor_and_sends_zero_for_an_all_zero_tensor():
    x = np.array([0.0, 0.0, 1.0, -2.0, 0.5], np.float32)
    values, scales = ErrorFeedback("int8", [2, 3]).encode(x)
    np.testing.assert_allclose(scales, [0.0, 2.0 / 127])
    np.testing.assert_array_equal(values, [0, 0, 64, -127, 32])


@pytest.mark.parametrize("setting", ["commit_dtype", "pull_dtype"])
def test_commit_and_pull_dtypes_are_checked_hyperparameters_of_every_rule(setting):
    for name in registry.available():
        assert getattr(registry.resolve(name), setting) == "float32"
    assert registry.resolve("easgd", **{setting: "int8"}).settings[setting] == "int8"
    with pytest.raises(HyperparameterError, match=r"one of \['float32', 'float16'"):
        registry.resolve("downpour", **{setting: "int4"})


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_the_server_applies_what_the_worker_encoded(make_server, connect, dtype):
    server = make_server(algorithm="downpour", commit_dtype=dtype)
    client = connect(server)
    assert client.commit_dtype == dtype
    total = np.zeros(sum(SIZES), np.float64)
    for update in updates(5, SIZES, scale=0.1):
        client.commit(update)
        total += update
    # DOWNPOUR adds each commit: the center is the sum of what arrived, which is the sum of
    # the updates less what the worker still holds back.
    np.testing.assert_allclose(
        server.center_flat + client._encoder.residual, total, rtol=0, atol=1e-6
    )
    stats = server.stats()
    assert stats.commits == 5


def refused(make_server, raw_peer, secret, dtype: str, tensors: tuple[np.ndarray, ...]) -> str:
    """Send ``tensors`` as a commit by hand to a ``dtype`` run; the error it got back.

    The server must have closed the connection and changed nothing.
    """
    server = make_server(commit_dtype=dtype)
    peer = raw_peer(server.port)
    handshake(peer, secret)
    peer.send(Frame(Op.COMMIT, 0, 0, 1, tensors=tensors))
    reply = peer.receive()
    assert reply.op is Op.ERROR
    assert peer.closed_by_server()
    assert server.version == 0
    np.testing.assert_array_equal(server.center_flat, np.zeros(sum(SIZES)))
    return str(reply.fields["message"])


def test_a_float32_commit_to_an_int8_run_is_refused_and_changes_nothing(
    make_server, raw_peer, secret
):
    message = refused(make_server, raw_peer, secret, "int8", (np.ones(sum(SIZES), np.float32),))
    assert "commit dtype, int8" in message


def test_an_int8_commit_to_a_float32_run_is_refused(make_server, raw_peer, secret):
    tensors = (np.ones(sum(SIZES), np.int8), np.ones(2, np.float32))
    assert "commit dtype, float32" in refused(make_server, raw_peer, secret, "float32", tensors)


def test_a_non_finite_int8_scale_is_refused_by_the_servers_finite_check(
    make_server, raw_peer, secret
):
    tensors = (np.ones(sum(SIZES), np.int8), np.array([1.0, np.inf], np.float32))
    assert "NaN or infinity" in refused(make_server, raw_peer, secret, "int8", tensors)


@pytest.mark.parametrize("dtype", COMPRESSED)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_update_reaches_the_server_as_one_and_is_refused(
    make_server, connect, dtype, bad
):
    server = make_server(commit_dtype=dtype)
    client = connect(server)
    update = np.ones(sum(SIZES), np.float32)
    update[2] = bad
    with pytest.raises(ServerError, match="NaN or infinity"):
        client.commit(update)
    assert server.version == 0
    np.testing.assert_array_equal(server.center_flat, np.zeros(sum(SIZES)))


def test_float16_decodes_every_bit_pattern_as_numpy_does():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.size, np.float32)
    decode("float16", [bits.view(np.float16)], [bits.size], out)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.isnan(out[nan]).all()
    np.testing.assert_array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def test_float16_encodes_as_numpys_round_to_nearest_even():
    rng = np.random.default_rng(3)
    scales = (1e-8, 1e-6, 1e-4, 1.0, 1e3, 6e4)
    x = np.concatenate(
        [rng.normal(size=20_000) * s for s in scales]
        + [[0.0, 6e-8, 3e-8, 2.98e-8, 65504.0, 65519.0, 5.960464e-08]]
    ).astype(np.float32)
    (half,) = ErrorFeedback("float16", [x.size]).encode(x)
    # numpy's cast, after the clip that keeps finite values finite.
    expected = np.clip(x, -65504, 65504).astype(np.float16)
    np.testing.assert_array_equal(half.view(np.uint16), expected.view(np.uint16))

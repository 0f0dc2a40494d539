"""Compressed commits: the dtypes an update may travel in, and their exact codecs.

A rule commits a flat float32 vector; on the wire it may travel smaller:

- ``float32``: as is (4 bytes a parameter);
- ``float16``: IEEE half precision, rounded to nearest, clipped to +-65504 so nothing finite
  becomes infinite (2 bytes);
- ``bfloat16``: the upper 16 bits of the float32, rounded to nearest even, sent as its raw
  bits (``uint16`` on the wire; 2 bytes);
- ``int8``: per-tensor symmetric quantization, ``q = rint(x / s)`` with
  ``s = max|x| / 127`` for each tensor of the model's layout, sent as ``int8`` values and one
  float32 scale per tensor (1 byte a parameter, plus 4 per tensor).

The worker keeps what rounding lost and adds it to its next update (:class:`ErrorFeedback`),
so over a run the center receives the full sum of the updates, less only the last rounding:
compression changes when an update's bits arrive, not how much of it does. The server
decodes every commit back into float32 before a rule sees it (:func:`decode`).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from distkeras_async.errors import RemoteProtocolError
from distkeras_async.wire.schema import DTYPES, TensorSpec

COMMIT_DTYPES = ("float32", "float16", "bfloat16", "int8")
_HALF_MAX = np.float32(65504.0)
_INT8_MAX = 127.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# The codecs walk an update in blocks of this many values (256 KB of float32) and run every
# step of a block while it is in the L2 cache: over whole arrays, each of their 8-20 numpy
# passes went to memory (int8 at 10M parameters: 51 ms a commit that way, 31 ms by blocks).
_BLOCK = 1 << 16


def check_commit_dtype(dtype: str) -> str:
    """``dtype`` if updates can travel in it.

    Raises:
        ValueError: naming the dtypes there are.
    """
    if dtype not in COMMIT_DTYPES:
        raise ValueError(f"commit dtype must be one of {list(COMMIT_DTYPES)}, got {dtype!r}")
    return dtype


def commit_specs(dtype: str, sizes: Sequence[int]) -> tuple[TensorSpec, ...]:
    """The tensors of a commit in ``dtype``, as the frame declares them.

    Args:
        dtype: one of :data:`COMMIT_DTYPES`.
        sizes: the element count of each tensor of the model, in layout order.
    """
    size = sum(sizes)
    if dtype == "int8":
        return (TensorSpec("int8", (size,)), TensorSpec("float32", (len(sizes),)))
    wire = "uint16" if dtype == "bfloat16" else dtype
    return (TensorSpec(wire, (size,)),)


def describe_commit(dtype: str, sizes: Sequence[int]) -> str:
    """What a commit in ``dtype`` must be, in words (for error messages)."""
    size = sum(sizes)
    if dtype == "int8":
        return f"one int8 vector of {size} elements and {len(sizes)} float32 scales"
    wire = "uint16 (bfloat16)" if dtype == "bfloat16" else dtype
    return f"one {wire} vector of {size} elements"


def commit_bytes(dtype: str, sizes: Sequence[int]) -> int:
    """Payload bytes of one commit in ``dtype``."""
    return sum(spec.nbytes for spec in commit_specs(dtype, sizes))


class CommitCodec:
    """How a run's commits travel: their tensors on the wire, and back to float32.

    The server keeps one for its run (the receiving end): a commit's header is checked
    against :attr:`specs` before a payload byte is read, the payload lands in
    :meth:`payload_view` (the float32 receive buffer itself when nothing is compressed),
    and :meth:`decode` leaves the update in float32 there for the rule.

    Args:
        dtype: the run's ``commit_dtype``.
        sizes: the element count of each tensor of the model (or of the shard's pieces).
    """

    def __init__(self, dtype: str, sizes: Sequence[int]) -> None:
        self.dtype = check_commit_dtype(dtype)
        self.sizes = list(sizes)
        self.specs = commit_specs(dtype, self.sizes)
        self.nbytes = sum(spec.nbytes for spec in self.specs)

    def check(self, specs: tuple[TensorSpec, ...]) -> None:
        """Refuse a commit whose tensors are not the run's, before a payload byte is read.

        Raises:
            RemoteProtocolError: saying what a commit must be.
        """
        if specs != self.specs:
            got = [spec.to_wire() for spec in specs][:3]
            raise RemoteProtocolError(
                f"update must be {describe_commit(self.dtype, self.sizes)} (the model's layout "
                f"in the run's commit dtype, {self.dtype}), got {got}"
            )

    def payload_view(self, plain: memoryview, wire: Callable[[int], memoryview]) -> memoryview:
        """Where a commit's payload lands.

        That is ``plain`` (the float32 buffer's bytes), or when compressed ``wire(nbytes)``,
        a byte buffer :meth:`decode` reads from.
        """
        return plain if self.dtype == "float32" else wire(self.nbytes)

    def decode(self, tensors: Sequence[np.ndarray], out: np.ndarray) -> tuple[np.ndarray, ...]:
        """The commit's tensors as the one float32 update in ``out`` (as they are if float32)."""
        if self.dtype == "float32":
            return tuple(tensors)
        decode(self.dtype, tensors, self.sizes, out)
        return (out,)


def all_finite(array: np.ndarray) -> bool:
    """Whether ``array`` has no NaN or infinity.

    ``a . a`` is NaN or infinite when any element is, and BLAS computes it in one pass
    (measured: 0.07 ms for 1M float32, against 0.15 ms for ``isfinite().all()`` and 0.5 ms
    for a float64 sum). Only when the dot overflows do we pay for the exact check.
    """
    flat = array.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.isfinite(flat).all())


# Bit patterns of the half-precision conversions (F. Giesen's branch-free float<->half, with
# round to nearest even); numpy's own casts take 6-140 ns a value here, worst for the tiny
# values updates are made of (half subnormals).
_SIGN = np.uint32(0x80000000)
_F16_OVERFLOW = np.uint32((127 + 16) << 23)  # |x| >= 65536: infinity
_F32_INF = np.uint32(255 << 23)
_SUBNORMAL = np.uint32(113 << 23)  # |x| < 2**-14: a half subnormal (or zero)
_DENORM_MAGIC = np.uint32(((127 - 15) + (23 - 10) + 1) << 23)
_REBIAS = np.uint32((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)
_HALF_EXP = np.uint32(0x7C00 << 13)


def _float_to_half_bits(
    x: np.ndarray, out: np.ndarray, scratch: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """``out`` (uint16) = the float16 bits of float32 ``x``, rounded to nearest even.

    ``scratch``: two uint32 arrays and one bool array of ``x``'s size. Whole-array passes
    only (a masked gather of the subnormal values costs more than computing both branches).
    """
    a, b, mask = scratch
    bits = x.view(np.uint32)
    np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=a)  # |x|
    # Normal halves: rebias the exponent, round to nearest even, keep the top bits.
    np.right_shift(a, 13, out=b)
    np.bitwise_and(b, 1, out=b)
    np.add(b, _REBIAS, out=b)
    np.add(b, a, out=b)
    np.right_shift(b, 13, out=b)
    # Subnormal halves: a float addition aligns the 10 mantissa bits, rounding as it goes.
    np.less(a, _SUBNORMAL, out=mask)
    if mask.any():
        magic = _DENORM_MAGIC.view(np.float32)
        np.add(a.view(np.float32), magic, out=a.view(np.float32))
        np.subtract(a, _DENORM_MAGIC, out=a)
        np.copyto(b, a, where=mask)
        np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=a)
    np.greater_equal(a, _F16_OVERFLOW, out=mask)
    if mask.any():  # infinity, NaN (a quiet one), or beyond the half range
        np.copyto(b, np.where(a > _F32_INF, np.uint32(0x7E00), np.uint32(0x7C00)), where=mask)
    np.right_shift(bits, 16, out=a)
    np.bitwise_and(a, np.uint32(0x8000), out=a)
    np.bitwise_or(b, a, out=b)
    np.copyto(out, b, casting="unsafe")


def _half_bits_to_float(h: np.ndarray, out: np.ndarray) -> None:
    """``out`` (float32) = the values of the float16 bits ``h`` (uint16)."""
    o = out.view(np.uint32)
    scratch = _scratch(h.size)
    np.copyto(o, h, casting="safe")
    np.bitwise_and(o, np.uint32(0x7FFF), out=o)
    np.left_shift(o, 13, out=o)
    np.bitwise_and(o, _HALF_EXP, out=scratch)  # the exponent
    np.add(o, np.uint32((127 - 15) << 23), out=o)
    mask = np.equal(scratch, _HALF_EXP)
    if mask.any():  # infinity or NaN
        np.add(o, np.uint32((128 - 16) << 23), out=o, where=mask)
    np.equal(scratch, 0, out=mask)
    if mask.any():  # zero or subnormal: renormalise with a float subtraction
        np.add(o, np.uint32(1 << 23), out=scratch)
        f = scratch.view(np.float32)
        np.subtract(f, _SUBNORMAL.view(np.float32), out=f)
        np.copyto(o, scratch, where=mask)
    np.copyto(scratch, h, casting="safe")
    np.bitwise_and(scratch, np.uint32(0x8000), out=scratch)
    np.left_shift(scratch, 16, out=scratch)
    np.bitwise_or(o, scratch, out=o)


_SCRATCH = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A uint32 scratch array of ``size`` for this thread (a view of one kept for later calls)."""
    array: np.ndarray | None = getattr(_SCRATCH, "array", None)
    if array is None or array.size < size:
        array = _SCRATCH.array = np.empty(size, np.uint32)
    return array[:size]


def _segments(sizes: Sequence[int]) -> list[tuple[int, int]]:
    bounds = np.cumsum([0, *sizes])
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def decode(
    dtype: str, tensors: Sequence[np.ndarray], sizes: Sequence[int], out: np.ndarray
) -> None:
    """Write the float32 update that ``tensors`` (a commit in ``dtype``) carry into ``out``."""
    if dtype == "float32":
        np.copyto(out, tensors[0])
    elif dtype == "float16":
        bits = tensors[0].view(np.uint16)
        for start, end in _blocks(0, out.size):  # in the cache, as the encoders
            _half_bits_to_float(bits[start:end], out[start:end])
    elif dtype == "bfloat16":
        bits = out.view(np.uint32)
        np.copyto(bits, tensors[0], casting="safe")
        np.left_shift(bits, 16, out=bits)
    elif dtype == "int8":
        values, scales = tensors
        for (start, end), scale in zip(_segments(sizes), scales, strict=True):
            np.multiply(values[start:end], scale, out=out[start:end], casting="unsafe")
    else:
        check_commit_dtype(dtype)


def add_decoded(
    dtype: str, tensors: Sequence[np.ndarray], sizes: Sequence[int], out: np.ndarray
) -> None:
    """Add the float32 values that ``tensors`` (in ``dtype``) carry to ``out``, in place.

    Block by block, with the arithmetic of the encoders' own decoding, so a receiver that
    adds what a :class:`BlockEncoder` kept ends with the same bits as the sender.
    """
    block = np.empty(min(out.size, _BLOCK), np.float32)
    if dtype == "int8":
        values, scales = tensors
        for (start, end), scale in zip(_segments(sizes), scales, strict=True):
            for a, b in _blocks(start, end):
                part = block[: b - a]
                np.multiply(values[a:b], scale, out=part, casting="unsafe")
                np.add(out[a:b], part, out=out[a:b])
        return
    for a, b in _blocks(0, out.size):
        part = block[: b - a]
        if dtype == "float16":
            _half_bits_to_float(tensors[0][a:b].view(np.uint16), part)
        elif dtype == "bfloat16":
            bits = part.view(np.uint32)
            np.copyto(bits, tensors[0][a:b], casting="safe")
            np.left_shift(bits, 16, out=bits)
        else:
            np.copyto(part, tensors[0][a:b])
        np.add(out[a:b], part, out=out[a:b])


class BlockEncoder:
    """The block-wise encoders of :class:`ErrorFeedback` and ``wire.deltas.CenterDelta``.

    Each encodes ``corrected``, the value to send, block by block; a subclass says what that
    value is (:meth:`_prepare`) and what to keep of the rounding (:meth:`_keep`). The buffers
    are allocated once and reused, like the client's receive buffer; the tensors
    :meth:`encode` returns are views of them, valid until the next call.
    """

    def __init__(
        self, dtype: str, sizes: Sequence[int], corrected: np.ndarray | None = None
    ) -> None:
        self.dtype = check_commit_dtype(dtype)
        self.sizes = [int(n) for n in sizes]
        size = sum(self.sizes)
        # The values to send, whole (int8 and float16 take two passes over them). Encoders
        # that never run at the same time may share it (a server's connections do).
        self._corrected = np.empty(size, np.float32) if corrected is None else corrected
        self._segments = _segments(self.sizes)
        specs = commit_specs(dtype, self.sizes)
        self._wire = [np.empty(spec.shape, DTYPES[spec.dtype]) for spec in specs]
        # Scratch for one block at a time (the encoders work block by block).
        block = min(size, _BLOCK)
        self._decoded = np.empty(block, np.float32)
        self._bits = np.empty(block, np.uint32) if dtype == "bfloat16" else None
        self._half = (
            (np.empty(block, np.uint32), np.empty(block, np.uint32), np.empty(block, np.bool_))
            if dtype == "float16"
            else None
        )

    def _prepare(self, source: np.ndarray, start: int, end: int) -> np.ndarray:
        """Write the values to send of ``[start, end)`` into ``_corrected``; return them."""
        raise NotImplementedError

    def _keep(self, start: int, end: int, decoded: np.ndarray) -> None:
        """``decoded`` is what the receiver decodes of ``[start, end)``: keep the difference."""
        raise NotImplementedError

    def _lost(self) -> None:
        """A non-finite value made the whole message travel as non-finite."""
        raise NotImplementedError

    def _encode(self, source: np.ndarray) -> tuple[np.ndarray, ...]:
        # A non-finite value leaves a NaN behind (inf - inf); the receiver refuses it.
        with np.errstate(invalid="ignore"):
            if self.dtype == "int8":
                self._encode_int8(source)
            elif self.dtype == "bfloat16":
                self._encode_bfloat16(source)
            else:
                self._encode_float16(source)
        return tuple(self._wire)

    def _encode_float16(self, source: np.ndarray) -> None:
        assert self._half is not None
        corrected, decoded = self._corrected, self._decoded
        wire = self._wire[0].view(np.uint16)
        a, b, mask = self._half
        # A NaN or an infinity must reach the server as one, which refuses the commit as it
        # refuses a float32 one; only a finite update is clipped (so nothing finite overflows).
        finite = True
        for start, end in _blocks(0, corrected.size):
            finite = finite and all_finite(self._prepare(source, start, end))
        for start, end in _blocks(0, corrected.size):
            n = end - start
            part, lost = corrected[start:end], decoded[:n]
            clipped = np.clip(part, -_HALF_MAX, _HALF_MAX, out=lost) if finite else part
            _float_to_half_bits(clipped, wire[start:end], (a[:n], b[:n], mask[:n]))
            _half_bits_to_float(wire[start:end], lost)  # what the server decodes
            self._keep(start, end, lost)

    def _encode_bfloat16(self, source: np.ndarray) -> None:
        bits = self._bits
        assert bits is not None
        wire = self._wire[0]
        for start, end in _blocks(0, self._corrected.size):
            part = self._prepare(source, start, end)
            value, word = part.view(np.uint32), bits[: end - start]
            # Round to nearest even: add 0x7FFF plus the lowest kept bit, then truncate. (A
            # NaN stays a NaN and an infinity one, which the server refuses.)
            np.right_shift(value, 16, out=word)
            np.bitwise_and(word, 1, out=word)
            np.add(word, 0x7FFF, out=word)
            np.add(word, value, out=word)
            np.right_shift(word, 16, out=word)
            np.copyto(wire[start:end], word, casting="unsafe")
            np.left_shift(word, 16, out=word)  # what the server decodes
            self._keep(start, end, word.view(np.float32))

    def _encode_int8(self, source: np.ndarray) -> None:
        corrected, scratch = self._corrected, self._decoded
        values, scales = self._wire
        # First pass: the corrected update and each tensor's max|x|. A NaN or an infinity
        # anywhere makes the whole commit travel as non-finite (NaN scales, which the server
        # refuses as it refuses a non-finite float32 commit); nothing is scaled then.
        peaks = []
        finite = True
        for start, end in self._segments:
            peak = 0.0
            for a, b in _blocks(start, end):
                part = self._prepare(source, a, b)
                high, low = float(part.max()), float(part.min())
                if not (math.isfinite(high) and math.isfinite(low)):
                    finite = False
                peak = max(peak, high, -low)
            peaks.append(peak)
        if not finite:
            values[:] = 0
            scales[:] = np.nan
            self._lost()
            return
        # Second pass: quantize, decode as the server will, keep what was lost.
        for index, ((start, end), peak) in enumerate(zip(self._segments, peaks, strict=True)):
            scale = peak / _INT8_MAX
            if scale == 0.0 or 1.0 / scale > _FLOAT32_MAX:
                # All zero, or so small that 1/scale overflows float32: sent as zeros, all
                # of it kept for the next message.
                scales[index] = 0.0
                values[start:end] = 0
                for a, b in _blocks(start, end):
                    self._keep(a, b, np.zeros(b - a, np.float32))
                continue
            scales[index] = scale
            inverse = np.float32(1.0 / scale)
            wire_scale = scales[index]  # the float32 scale the server multiplies by
            for a, b in _blocks(start, end):
                block = scratch[: b - a]
                np.multiply(corrected[a:b], inverse, out=block)
                # |x| * (1 / scale) <= 127 up to float32 rounding, so no clip is needed.
                np.rint(block, out=values[a:b], casting="unsafe")
                np.multiply(values[a:b], wire_scale, out=block, casting="unsafe")
                self._keep(a, b, block)


class ErrorFeedback(BlockEncoder):
    """A worker's encoder: each update plus what earlier roundings lost, in ``dtype``.

    The tensors :meth:`encode` returns are views of buffers kept for the next call.

    Args:
        dtype: one of :data:`COMMIT_DTYPES`.
        sizes: the element count of each tensor of the model, in layout order (int8 scales
            one tensor at a time).
    """

    def __init__(self, dtype: str, sizes: Sequence[int]) -> None:
        super().__init__(dtype, sizes)
        self.residual = np.zeros(self._corrected.size, np.float32)

    def encode(self, update: np.ndarray) -> tuple[np.ndarray, ...]:
        """The wire tensors for ``update`` + the residual; the residual becomes what was lost."""
        if self.dtype == "float32":
            return (update,)
        return self._encode(update)

    def _prepare(self, source: np.ndarray, start: int, end: int) -> np.ndarray:
        out = self._corrected[start:end]
        np.add(source[start:end], self.residual[start:end], out=out)
        return out

    def _keep(self, start: int, end: int, decoded: np.ndarray) -> None:
        np.subtract(self._corrected[start:end], decoded, out=self.residual[start:end])

    def _lost(self) -> None:
        self.residual[:] = np.nan


def _blocks(start: int, end: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` in consecutive pieces of at most :data:`_BLOCK` values."""
    for a in range(start, end, _BLOCK):
        yield a, min(a + _BLOCK, end)

"""Compressed replies: the center sent as its change since what the worker last received.

With a ``pull_dtype`` other than float32, both ends of a connection keep a float32 *view*:
what the worker holds of the center. The server's first reply on a connection carries the
whole float32 center, and both sides copy it into their view. Every later reply carries
``center - view`` in ``pull_dtype``, encoded as a commit is (:mod:`.compression`). Both
sides then add the decoded change to their view, with the same arithmetic, so the two views
stay equal bit for bit.

What the rounding lost stays in ``center - view`` and travels with the next reply: this is
error feedback on the server's side. The worker's center is therefore off by at most one
rounding of the latest change (int8: ``max|change| / 254`` per tensor), never by a drift
that accumulates. The views live and die with the connection, so a reconnect starts again
from a whole center.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distkeras_async.wire.compression import (
    BlockEncoder,
    add_decoded,
    all_finite,
    check_commit_dtype,
    commit_specs,
)
from distkeras_async.wire.schema import TensorSpec


class CenterDelta(BlockEncoder):
    """The server's side of one connection: encodes each reply against the worker's view.

    Args:
        dtype: the run's ``pull_dtype`` (not float32).
        sizes: the element count of each tensor of the center, in layout order.
        check_finite: whether the center may hold NaN or infinity (a rule that allows
            non-finite updates); such a center, and the reply after it, travel whole.
        scratch: a float32 array of the center's size for the encoding, which the
            connections of one event loop share (one encodes at a time); None: its own.
    """

    def __init__(
        self,
        dtype: str,
        sizes: Sequence[int],
        *,
        check_finite: bool,
        scratch: np.ndarray | None = None,
    ) -> None:
        super().__init__(_compressed(dtype), sizes, scratch)
        self.view: np.ndarray | None = None
        self._check_finite = check_finite
        self._view_finite = False

    def encode(self, center: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The tensors of the reply carrying ``center``, or None to send it whole.

        The view then holds what the worker will hold. A whole reply is due on the first
        reply of the connection and whenever the center, or the view, is not finite.
        """
        finite = not self._check_finite or all_finite(center)
        if self.view is None or not self._view_finite or not finite:
            if self.view is None:
                self.view = np.empty_like(center)
            np.copyto(self.view, center)
            self._view_finite = finite
            return None
        return self._encode(center)

    def _prepare(self, source: np.ndarray, start: int, end: int) -> np.ndarray:
        assert self.view is not None
        out = self._corrected[start:end]
        np.subtract(source[start:end], self.view[start:end], out=out)
        return out

    def _keep(self, start: int, end: int, decoded: np.ndarray) -> None:
        assert self.view is not None
        np.add(self.view[start:end], decoded, out=self.view[start:end])

    def _lost(self) -> None:
        # Unreachable for a finite center and view (checked above); kept consistent anyway:
        # the worker adds NaN scales times zero, so both views become NaN, and the next
        # reply travels whole.
        assert self.view is not None
        self.view[:] = np.nan
        self._view_finite = False


class CenterView:
    """The worker's side of one connection: the center as the replies built it.

    Args:
        dtype: the run's ``pull_dtype`` (not float32).
        sizes: the element count of each tensor of the center, in layout order.
    """

    def __init__(self, dtype: str, sizes: Sequence[int]) -> None:
        self.dtype = _compressed(dtype)
        self.sizes = [int(n) for n in sizes]
        self.specs: tuple[TensorSpec, ...] = commit_specs(dtype, self.sizes)
        self.nbytes = sum(spec.nbytes for spec in self.specs)
        self.view: np.ndarray | None = None
        # Where a change's payload lands; allocated at the first change.
        self.wire: bytearray | None = None

    def whole(self, center: np.ndarray) -> None:
        """A whole center arrived: the view becomes a copy of it."""
        if self.view is None:
            self.view = np.empty_like(center)
        np.copyto(self.view, center)

    def payload(self) -> memoryview:
        """The buffer a change's payload is received into (once a whole center arrived)."""
        if self.wire is None:
            self.wire = bytearray(self.nbytes)
        return memoryview(self.wire)

    def add(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        """Add a change (the tensors of a reply) to the view; return the view."""
        assert self.view is not None
        add_decoded(self.dtype, tensors, self.sizes, self.view)
        return self.view


def _compressed(dtype: str) -> str:
    """``dtype`` if a change of the center can travel in it (float32 travels whole)."""
    if check_commit_dtype(dtype) == "float32":
        raise ValueError("a float32 pull_dtype sends the whole center: there is no change")
    return dtype

"""Where a worker's center replies land, and the view that a change is added to.

A whole center is received straight into the caller's array (``recv_into``, no copy). With
a compressed ``pull_dtype``, every reply after the connection's first is a change: it lands
in a buffer of its own, is added to the view the connection keeps (``wire/deltas.py``), and
the view is copied into the caller's array.
"""

from __future__ import annotations

import numpy as np

from distkeras_async.errors import RemoteProtocolError
from distkeras_async.layout import FLAT_DTYPE, Layout
from distkeras_async.wire.deltas import CenterView
from distkeras_async.wire.frames import FrameHeader
from distkeras_async.wire.messages import Center


class CenterReceiver:
    """One connection's center replies, on the worker's side.

    Args:
        layout: the center's layout (the connection's: one shard's for a sharded center).
        pull_dtype: the run's pull dtype.
    """

    def __init__(self, layout: Layout, pull_dtype: str) -> None:
        self._layout = layout
        sizes = [spec.size for spec in layout.specs]
        self._view = None if pull_dtype == "float32" else CenterView(pull_dtype, sizes)
        self._out: np.ndarray | None = None
        self._got_change = False

    def expect(self, out: np.ndarray | None) -> None:
        """The next reply is a center, to be received into ``out`` (a new array if None).

        Raises:
            ValueError: if ``out`` is not a contiguous float32 vector of the layout's size.
        """
        size = self._layout.size
        if out is not None and (
            out.dtype != FLAT_DTYPE or out.shape != (size,) or not out.flags.c_contiguous
        ):
            raise ValueError(f"out must be a contiguous float32 vector of {size} elements")
        self._out = out
        self._got_change = False

    def allocate(self, header: FrameHeader) -> memoryview:
        """Where the payload of the center frame ``header`` announces is received.

        Raises:
            RemoteProtocolError: if the tensors are neither the whole center nor a change in
                the pull dtype, or are a change of a center never received.
        """
        view = self._view
        self._got_change = view is not None and header.specs == view.specs
        if view is not None and self._got_change:
            if view.view is None:
                raise RemoteProtocolError("the server sent a change of a center it never sent")
            return view.payload()
        expected = self._layout.flat_spec()
        if header.specs != (expected,):
            raise RemoteProtocolError("the server sent a center that does not match the layout")
        if self._out is None:
            self._out = np.empty(expected.size, FLAT_DTYPE)
        return self._out.data.cast("B")

    def received(self, reply: Center, out: np.ndarray | None) -> np.ndarray:
        """The center ``reply`` carries, received for :meth:`expect` ``(out)``.

        Raises:
            RemoteProtocolError: if the reply's ``change`` flag does not match its tensors.
        """
        result, self._out = self._out, None
        if reply.change != self._got_change:
            raise RemoteProtocolError("a center reply's change flag does not match its tensors")
        if self._view is None:
            assert result is not None
            return result
        if reply.change:  # the view, the change added, into the caller's array
            result = out if out is not None else np.empty(self._layout.size, FLAT_DTYPE)
            np.copyto(result, self._view.add(reply.wire_tensors()))
        else:
            assert result is not None
            self._view.whole(result)
        return result

    def forget(self) -> None:
        """The receive failed: no later frame may land in the caller's array."""
        self._out = None

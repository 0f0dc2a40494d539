"""What one connection's center replies carry, and the center buffers its unsent ones read.

A reply is the whole center, sent straight from a center buffer (held until the transport
has sent it, so no newer version is written into it meanwhile), or, with a compressed
``pull_dtype`` after the connection's first reply, the center's change since the last one,
encoded into buffers of the connection's own (``wire/deltas.py``).
"""

from __future__ import annotations

from distkeras_async.server.buffers import Buffer
from distkeras_async.server.core import ServerCore
from distkeras_async.wire.deltas import CenterDelta
from distkeras_async.wire.messages import Center, Control


class CenterReplies:
    """One connection's center replies.

    Args:
        core: the server's shared state (the pull dtype, the center store, the scratch).
    """

    def __init__(self, core: ServerCore) -> None:
        self._core = core
        self._held: list[Buffer] = []
        self._delta: CenterDelta | None = None

    def message(
        self, buffer: Buffer, version: int, duplicate: bool, control: Control
    ) -> tuple[Center, Buffer | None]:
        """The reply carrying the center in ``buffer``, and the buffer it sends from (or None).

        A change is encoded into this connection's own buffers: no later reply overwrites
        them before they are sent, as the session handles no request while a reply is unsent.
        """
        core = self._core
        if core.pull_dtype != "float32":
            if self._delta is None:
                self._delta = CenterDelta(
                    core.pull_dtype,
                    core.tensor_sizes,
                    check_finite=core.algorithm.allow_nonfinite,
                    scratch=core.change_scratch(),
                )
            change = self._delta.encode(buffer.array)
            if change is not None:
                scales = change[1] if len(change) > 1 else None
                return Center(change[0], version, duplicate, control, scales, change=True), None
        return Center(buffer.array, version, duplicate, control), buffer

    def hold(self, buffer: Buffer) -> None:
        """``buffer``'s bytes are not all sent yet: keep it from being reused."""
        self._core.center.hold(buffer)
        self._held.append(buffer)

    def release(self) -> None:
        """Everything written has been sent (or the connection is gone)."""
        while self._held:
            self._core.center.unhold(self._held.pop())

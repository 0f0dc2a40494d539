"""The resource limits of one parameter server, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass

# Seconds a connection may stay silent between two frames, by default. A worker is silent
# while it computes a communication window, which on a large model, slow steps or a busy
# GPU takes minutes: an hour leaves room for that, and a dead worker of a synchronous round
# is still caught by the round's own timeout (round_timeout), long before.
IDLE_TIMEOUT = 3600.0
# Seconds a frame has, from its first byte, to arrive whole: a 100M-parameter commit (400 MB)
# takes a few seconds even on a slow link; a peer that stalls mid-frame holds a receive buffer.
FRAME_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one server (see :class:`~distkeras_async.server.ParameterServer`).

    Attributes:
        max_connections: open connections allowed at once.
        round_timeout: seconds a synchronous round may wait for its last worker.
        idle_timeout: seconds a connection may stay silent between two frames.
        handshake_timeout: seconds a new connection has to authenticate.
        frame_timeout: seconds a frame has, from its first byte, to arrive whole.
        send_timeout: seconds a worker may leave a reply unread.
        receive_buffers: model-sized buffers for incoming commits.
        center_buffers: model-sized buffers for the center and its next version.
    """

    max_connections: int
    round_timeout: float
    idle_timeout: float
    handshake_timeout: float
    frame_timeout: float
    send_timeout: float
    receive_buffers: int
    center_buffers: int

"""The resource limits of one parameter server, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one server (see :class:`~distkeras_async.server.ParameterServer`).

    Attributes:
        max_connections: open connections allowed at once.
        round_timeout: seconds a synchronous round may wait for its last worker.
        idle_timeout: seconds a connection may stay silent.
        handshake_timeout: seconds a new connection has to authenticate.
        frame_timeout: seconds a started frame has to arrive completely.
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

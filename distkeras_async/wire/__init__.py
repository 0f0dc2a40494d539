"""The wire protocol, sans-IO: frames, typed messages, the incremental decoder, HMAC auth.

Nothing here touches a socket or an event loop, and nothing imports a layer above it (only
:mod:`distkeras_async.errors`): the server and the client both move bytes and call this
package.

* :mod:`~distkeras_async.wire.schema` -- ops, limits, dtypes, each op's fields;
* :mod:`~distkeras_async.wire.frames` -- a frame to buffers, and a header from bytes;
* :mod:`~distkeras_async.wire.decoder` -- bytes (or ``recv_into``) to frames, incrementally;
* :mod:`~distkeras_async.wire.messages` -- one typed message per op;
* :mod:`~distkeras_async.wire.auth` -- the HMAC challenge-response.
"""

from distkeras_async.wire.decoder import FrameDecoder
from distkeras_async.wire.frames import Frame, FrameHeader, encode, encode_bytes
from distkeras_async.wire.messages import (
    Ack,
    Bye,
    Center,
    Challenge,
    Commit,
    CommitPull,
    Error,
    Hello,
    Message,
    Pull,
    Report,
    Welcome,
    encode_message,
    encode_message_bytes,
    from_frame,
)
from distkeras_async.wire.schema import PROTOCOL_VERSION, Op, TensorSpec

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "Bye",
    "Center",
    "Challenge",
    "Commit",
    "CommitPull",
    "Error",
    "Frame",
    "FrameDecoder",
    "FrameHeader",
    "Hello",
    "Message",
    "Op",
    "Pull",
    "Report",
    "TensorSpec",
    "Welcome",
    "encode",
    "encode_bytes",
    "encode_message",
    "encode_message_bytes",
    "from_frame",
]

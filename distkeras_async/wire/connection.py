"""The protocol's state machine, for both ends of a connection, without any I/O (sans-IO).

One table (:data:`TABLE`) says, for each phase of a connection, which message each side may
send and the phase it leads to. The server's session and the worker's client each keep a
:class:`Connection` in their role and tell it every message they send and receive; it
refuses one that is out of order (``LocalProtocolError`` for this side's, ``RemoteProtocolError``
for the peer's) and answers whether a frame may carry tensors now, before a payload byte is
read. Neither end keeps an order of its own::

    client                                   server
    CHALLENGE --------- challenge ---------> (sent)          -> HELLO
    HELLO     <-------- hello -------------- (received)      -> WELCOME
    WELCOME   --------- welcome -----------> (sent)          -> READY, or RESUME if it
    RESUME    --------- state -------------> (sent)          -> READY    says a state follows
    READY     <-------- pull, commit, commit_pull, report, state (no reply), bye (closes)
    READY     --------- center, ack ------->
    any phase <-------- error ------------> either way       -> CLOSED

The message classes (``wire/messages.py``) and the codecs (``wire/compression.py``,
``wire/deltas.py``) belong to the wire layer too; the ends only move bytes and decide what a
request means.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from distkeras_async.errors import LocalProtocolError, RemoteProtocolError
from distkeras_async.wire.messages import (
    MESSAGE_TYPES,
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
    RuleState,
    Welcome,
)
from distkeras_async.wire.schema import TENSOR_OPS, Op


class Role(Enum):
    """Which end of the connection."""

    CLIENT = "client"
    SERVER = "server"


class Phase(Enum):
    """Where a connection is in its life (the same phases at both ends)."""

    CHALLENGE = "challenge"  # the server's challenge is next
    HELLO = "hello"  # the client's hello is next
    WELCOME = "welcome"  # the server's welcome is next
    RESUME = "resume"  # the rule state the welcome announced is next
    READY = "ready"  # authenticated: requests and replies
    CLOSED = "closed"  # an error, a goodbye, or the connection was lost


_C, _S = Role.CLIENT, Role.SERVER

TABLE: Mapping[Phase, Mapping[tuple[Role, type[Message]], Phase]] = {
    Phase.CHALLENGE: {(_S, Challenge): Phase.HELLO},
    Phase.HELLO: {(_C, Hello): Phase.WELCOME},
    Phase.WELCOME: {(_S, Welcome): Phase.READY},  # RESUME when it announces a state
    Phase.RESUME: {(_S, RuleState): Phase.READY},
    Phase.READY: {
        (_C, Pull): Phase.READY,
        (_C, Commit): Phase.READY,
        (_C, CommitPull): Phase.READY,
        (_C, Report): Phase.READY,
        (_C, RuleState): Phase.READY,
        (_C, Bye): Phase.CLOSED,
        (_S, Center): Phase.READY,
        (_S, Ack): Phase.READY,
    },
    Phase.CLOSED: {},
}
"""phase -> {(sender, message class): the phase after it}. An :class:`Error` from either side
closes the connection in any phase but CLOSED."""


class Connection:
    """One end of a connection: its role and phase, checked against :data:`TABLE`.

    Args:
        role: this end's role.
    """

    def __init__(self, role: Role) -> None:
        self.role = role
        self.peer = Role.SERVER if role is Role.CLIENT else Role.CLIENT
        self.phase = Phase.CHALLENGE

    @property
    def ready(self) -> bool:
        """Whether the handshake is complete and the connection still open."""
        return self.phase is Phase.READY

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self.phase is Phase.CLOSED

    def sent(self, message: Message) -> None:
        """This end sends ``message``.

        Raises:
            LocalProtocolError: if this end may not send it now.
        """
        self._advance(self.role, message, LocalProtocolError)

    def received(self, message: Message) -> None:
        """The peer sent ``message``.

        Raises:
            RemoteProtocolError: if the peer may not send it now (the message says what
                was expected).
        """
        self._advance(self.peer, message, RemoteProtocolError)

    def may_carry_tensors(self, op: Op) -> bool:
        """Whether the peer may now send a frame of ``op`` that carries tensors.

        Asked when a frame's header arrives, before any payload byte is read or a buffer
        is taken.
        """
        return op in TENSOR_OPS and (self.peer, MESSAGE_TYPES[op]) in TABLE[self.phase]

    def expected(self) -> str:
        """What may come next, in words: ``"hello from the client"``."""
        parts = []
        for who in (Role.CLIENT, Role.SERVER):
            ops = [kind.op.value for sender, kind in TABLE[self.phase] if sender is who]
            if ops:
                parts.append(f"{', '.join(ops)} from the {who.value}")
        return " or ".join(parts) or "nothing more"

    def close(self) -> None:
        """The connection ended (an error frame, a goodbye, or it was lost)."""
        self.phase = Phase.CLOSED

    def _advance(self, sender: Role, message: Message, error: type[Exception]) -> None:
        if isinstance(message, Error) and self.phase is not Phase.CLOSED:
            self.phase = Phase.CLOSED
            return
        after = TABLE[self.phase].get((sender, type(message)))
        if after is None:
            raise error(
                f"expected {self.expected()} in phase {self.phase.value!r}, got "
                f"{message.op.value!r} from the {sender.value}"
            )
        if isinstance(message, Welcome) and message.state:
            after = Phase.RESUME
        self.phase = after

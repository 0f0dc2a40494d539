"""The exceptions the package raises, in one place so callers can catch them by kind."""

from __future__ import annotations


class DistKerasError(Exception):
    """Base class of every error raised by distkeras-async."""


class ProtocolError(DistKerasError):
    """A frame or a message broke the wire protocol.

    Like h11, the protocol layer raises the local flavour when *this* side was asked to
    send something invalid, and the remote flavour when the peer sent something invalid.
    """


class LocalProtocolError(ProtocolError):
    """This side tried to encode or send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or message."""


class AuthenticationError(DistKerasError):
    """The handshake failed: wrong secret, replayed proof, or an impostor server."""


class ServerError(DistKerasError):
    """The parameter server answered with an ``error`` frame; the message is its reason."""


class RoundFailedError(DistKerasError):
    """A synchronous round could not complete (a worker timed out, died or failed)."""


class ConnectionClosedError(DistKerasError):
    """The peer closed the connection before a complete reply arrived."""


class AlgorithmError(DistKerasError):
    """An algorithm was misconfigured or could not be loaded."""


class HyperparameterError(AlgorithmError, ValueError):
    """A hyperparameter is unknown or has an invalid value; the message names it."""


class UnknownAlgorithmError(AlgorithmError, KeyError):
    """No algorithm is registered under the requested name; the message lists those that are."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a readable sentence is more useful here.
        return str(self.args[0]) if self.args else ""


class PluginError(AlgorithmError):
    """An entry-point plugin failed to import or does not define a valid algorithm."""

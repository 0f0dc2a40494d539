"""Every exception the package raises, in one place, so callers can catch them by kind.

Errors that cross the wire carry an :class:`ErrorCode`: the server puts it in its ``error``
frame and the client maps it back to the exception class here (:func:`from_code`), so no
one has to search a message's text to know what went wrong.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """The machine-readable kind of an ``error`` frame."""

    AUTHENTICATION = "authentication"  # the handshake failed
    LIMIT = "limit"  # a limit was exceeded (connections, queued requests, a timeout)
    PROTOCOL = "protocol"  # a frame or message broke the protocol
    BAD_UPDATE = "bad_update"  # a commit was refused (non-finite, or it would overflow)
    RULE_FAILED = "rule_failed"  # the algorithm's rule raised: the run failed
    ROUND_FAILED = "round_failed"  # a synchronous round could not complete: the run failed
    WORKER_FAILED = "worker_failed"  # a worker reports that it failed
    CHECKPOINT_FAILED = "checkpoint_failed"  # periodic checkpoints kept failing: the run failed
    INTERNAL = "internal"  # a bug in the server; the connection is closed


class DistKerasError(Exception):
    """Base class of every error raised by distkeras-async."""


# -- the wire ----------------------------------------------------------------------------


class ProtocolError(DistKerasError):
    """A frame or a message broke the wire protocol.

    Like h11, the protocol layer raises the local flavour when *this* side was asked to
    send something invalid, and the remote flavour when the peer sent something invalid.
    """


class LocalProtocolError(ProtocolError):
    """This side tried to encode or send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or message."""

    code: ErrorCode = ErrorCode.PROTOCOL


class LimitExceededError(RemoteProtocolError):
    """The peer exceeded a limit (connections, queued requests, a timeout)."""

    code = ErrorCode.LIMIT


class BadUpdateError(RemoteProtocolError):
    """A commit was refused before it touched the center (non-finite, or it would overflow)."""

    code = ErrorCode.BAD_UPDATE


class RunEndedError(RemoteProtocolError):
    """A request reached a server whose run already failed; it carries the run's code."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class AuthenticationError(DistKerasError):
    """The handshake failed: wrong secret, replayed proof, or an impostor server."""


class ConnectionClosedError(DistKerasError):
    """The peer closed the connection before a complete reply arrived."""


class ServerError(DistKerasError):
    """The parameter server answered with an ``error`` frame.

    Attributes:
        code: the frame's :class:`ErrorCode`.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


# -- the run -----------------------------------------------------------------------------


class RunFailedError(DistKerasError):
    """The training run failed on the parameter server; every worker was told."""

    code: ErrorCode = ErrorCode.ROUND_FAILED


class RoundFailedError(RunFailedError):
    """A synchronous round could not complete (a worker timed out, died or failed)."""

    code = ErrorCode.ROUND_FAILED


class RuleFailedError(RunFailedError):
    """The algorithm's rule raised on the parameter server; the message has its traceback."""

    code = ErrorCode.RULE_FAILED


class WorkerReportedError(RunFailedError):
    """A worker of a synchronous run reported its own failure to the server."""

    code = ErrorCode.WORKER_FAILED


def from_code(code: ErrorCode, message: str) -> DistKerasError:
    """The exception a client raises for an ``error`` frame with ``code``."""
    if code is ErrorCode.AUTHENTICATION:
        return AuthenticationError(f"the parameter server rejected us: {message}")
    run_failure: type[DistKerasError] | None = {
        ErrorCode.RULE_FAILED: RuleFailedError,
        ErrorCode.ROUND_FAILED: RoundFailedError,
        ErrorCode.WORKER_FAILED: WorkerReportedError,
        ErrorCode.CHECKPOINT_FAILED: CheckpointError,
    }.get(code)
    if run_failure is not None:
        return run_failure(message)
    return ServerError(message, code)


# -- algorithms --------------------------------------------------------------------------


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


# -- models, data and Spark ----------------------------------------------------------------


class CheckpointError(DistKerasError):
    """A checkpoint cannot be written, read, or does not match the model.

    Attributes:
        model: when the run's final checkpoint could not be written, the trained Keras
            model (the work is not lost: save it elsewhere); None otherwise.
    """

    def __init__(self, message: str, model: Any = None) -> None:
        super().__init__(message)
        self.model = model


class SerializationError(DistKerasError, ValueError):
    """A model, optimizer, loss or metric cannot be described for the workers."""


class LayoutMismatchError(DistKerasError):
    """The model rebuilt on a worker does not have the driver model's weight layout."""


class BackendError(DistKerasError, ValueError):
    """A Keras backend that is unknown, not installed, or not the one Keras already runs on."""


class DeviceError(DistKerasError):
    """GPUs asked for that the cluster cannot give, or a task that cannot use its own."""


class ColumnError(ValueError):
    """A DataFrame column cannot be turned into a numeric array; the message names it."""


class InputDataError(DistKerasError, ValueError):
    """The training data does not fit the model or cannot train it.

    An empty DataFrame, a width that does not match, nulls, NaN: the message names the
    column, what was expected and what was found, and what to change.
    """


class InsufficientSlotsError(DistKerasError):
    """The cluster cannot run every worker of a synchronous algorithm at once."""


class WorkerFailedError(DistKerasError):
    """A worker failed; the message carries its error and traceback."""


class TrainingDivergedError(DistKerasError):
    """A worker's loss became NaN or infinite: the message names the worker and the step."""


class DemoError(DistKerasError):
    """The demo cannot run here (no Java, for instance); the message says what to do."""


# -- warnings ------------------------------------------------------------------------------


class CenterStayedBehindWarning(UserWarning):
    """A run ended, but the returned center kept little of what the workers learned."""

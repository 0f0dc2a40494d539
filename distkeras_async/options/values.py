"""The defaults of the run options, and the checks their declarations name.

Each check takes ``(value, name)`` and returns the value (normalised where that is
lossless) or raises ValueError/TypeError naming the option, with the package's one rule for
each kind of value (:mod:`distkeras_async.checks`): a bool is not a number, ``2.0`` is not
an int.
"""

from __future__ import annotations

import importlib.util
import math
import os
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

from distkeras_async import checks
from distkeras_async.errors import BackendError
from distkeras_async.tls import read_ca
from distkeras_async.wire.auth import check_secret

# The default in-memory limit: a partition of at most this many Arrow bytes stays in memory
# and trains from numpy arrays (a full shuffle every epoch, no file); a larger one streams.
# Measured (benchmarks/streaming.py): the in-memory path peaks at ~2.4x the partition (the
# Arrow blocks and the decoded arrays overlap while it is decoded), the streamed path at a
# flat ~235 MiB over the worker's baseline, at the same speed; at 64 MiB the in-memory path
# stays under what streaming costs anyway.
IN_MEMORY_LIMIT = 64 << 20
# Seconds a synchronous round waits for its slowest worker: a round is one communication
# window of local steps on every worker, seconds to minutes on slow hardware.
ROUND_TIMEOUT = 300.0
# Seconds a connection may stay silent between two frames, by default. A worker is silent
# while it computes a communication window, which on a large model, slow steps or a busy
# GPU takes minutes: an hour leaves room for that, and a dead worker of a synchronous round
# is still caught by the round's own timeout, long before.
IDLE_TIMEOUT = 3600.0
# Seconds a frame has, from its first byte, to arrive whole: a 100M-parameter commit (400 MB)
# takes a few seconds even on a slow link; a peer that stalls mid-frame holds a receive buffer.
FRAME_TIMEOUT = 60.0
# Seconds a worker of a synchronous run waits for a commit's reply beyond the round's own
# timeout, before it gives up by itself: the server's timeout error should arrive first.
REPLY_MARGIN = 30.0
# The Keras backends and the package each needs.
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
RETRY_MODES = ("resume", "restart")


def positive_int(value: Any, name: str) -> int:
    """A positive int."""
    return checks.positive_int(value, name)


def optional_positive_int(value: Any, name: str) -> int | None:
    """None, or a positive int."""
    return checks.optional_positive_int(value, name)


def nonnegative_int(value: Any, name: str) -> int:
    """An int of at least 0."""
    return checks.positive_int(value, name, minimum=0)


def positive_number(value: Any, name: str) -> float:
    """A finite number above 0."""
    return checks.positive_number(value, name)


def optional_positive_number(value: Any, name: str) -> float | None:
    """None, or a finite number above 0."""
    return checks.optional_positive_number(value, name)


def port(value: Any, name: str) -> int:
    """A TCP port, 0 (the OS picks one) to 65535."""
    return checks.port(value, name)


def boolean(value: Any, name: str) -> bool:
    """True or False (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def optional_boolean(value: Any, name: str) -> bool | None:
    """None, True or False."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None, got {value!r}")
    return value


def optional_name(value: Any, name: str) -> str | None:
    """None, or a non-empty string (a column, a host, a device)."""
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def device_name(value: Any, name: str) -> str:
    """A Keras device name (``"cpu"``, ``"gpu:0"``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a Keras device name, got {value!r}")
    return value


def columns(value: Any, name: str) -> tuple[str, ...]:
    """A column name or a non-empty list of them, as a tuple."""
    names = (value,) if isinstance(value, str) else tuple(value) if _iterable(value) else ()
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError(f"{name} must be a column name or a non-empty list of names")
    return names


def _iterable(value: Any) -> bool:
    """A list, tuple, array or index of names (not bytes, not a mapping)."""
    return isinstance(value, Iterable) and not isinstance(value, bytes | Mapping)


def class_weights(value: Any, name: str) -> dict[int, float] | None:
    """None, or ``{class index: weight}``.

    Whether each index is a class of the model is checked where the model is known.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict {{class index: weight}}, got {value!r}")
    out: dict[int, float] = {}
    for key, weight in value.items():
        index = key
        if hasattr(index, "__index__") and not isinstance(index, bool):
            index = int(index)  # numpy integers
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"{name} key {key!r} is not a class index")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(f"{name}[{key!r}] must be a finite number >= 0, got {weight!r}")
        out[index] = float(weight)
    return out


def retry_mode(value: Any, name: str) -> str:
    """``"resume"`` or ``"restart"``."""
    if value not in RETRY_MODES:
        raise ValueError(f"{name} must be 'resume' or 'restart', got {value!r}")
    return str(value)


def backend_name(value: Any, name: str) -> str | None:
    """None (the driver's backend), or the name of a Keras backend.

    Whether its package is installed is checked where it is used (:func:`installed_backend`):
    a saved stage that names a backend loads on a machine without it, and predicts there on
    that machine's backend.
    """
    if value is None:
        return None
    if value not in BACKENDS:
        raise BackendError(f"{name} must be one of {sorted(BACKENDS)}, got {value!r}")
    return str(value)


def installed_backend(value: Any, name: str) -> str:
    """A Keras backend whose package is installed here.

    Raises:
        BackendError: naming the backends, or the extra to install.
    """
    value = backend_name(value, name)
    if value is None:
        raise BackendError(f"{name} must be one of {sorted(BACKENDS)}, got None")
    if importlib.util.find_spec(BACKENDS[value]) is None:
        extra = "" if value == "tensorflow" else f" (pip install 'distkeras-async[{value}]')"
        raise BackendError(
            f"the Keras backend {value!r} needs the {BACKENDS[value]!r} package, which is "
            f"not installed{extra}"
        )
    return str(value)


def secret(value: Any, name: str) -> bytes | None:
    """None (a fresh secret per run), or enough random bytes."""
    return None if value is None else check_secret(value)


def tls_setting(value: Any, name: str) -> Any:
    """None, an ``ssl.SSLContext``, or ``(certificate_file, key_file)``."""
    if value is None or isinstance(value, ssl.SSLContext):
        return value
    if isinstance(value, list):
        value = tuple(value)
    pair = isinstance(value, tuple) and len(value) == 2
    if not (pair and all(isinstance(p, str) for p in value)):
        raise TypeError(
            f"{name} must be an ssl.SSLContext or (certificate_file, key_file), got {value!r}"
        )
    return value


def tls_for_shards(value: Any, shards: int | None) -> None:
    """Refuse an ``ssl.SSLContext`` for more than one shard (None counts as one).

    A sharded parameter server runs each shard in its own process, which cannot share a
    context object: the shards need the certificate and key files.

    Raises:
        ValueError: for a context and ``shards`` above 1, saying what to pass instead.
    """
    if isinstance(value, ssl.SSLContext) and (shards or 1) > 1:
        raise ValueError(
            "a sharded parameter server runs each shard in its own process, which cannot "
            "share an ssl.SSLContext: pass ssl_context=(certificate_file, key_file)"
        )


def tls_ca(value: Any, name: str) -> str | None:
    """None, or CA certificates as PEM text (read from the file when given a path)."""
    if value is not None and not isinstance(value, str | bytes):
        raise TypeError(f"{name} must be PEM text or a file's path, got {value!r}")
    return None if value is None else read_ca(value)


def path(value: Any, name: str) -> str | None:
    """None, or a file system path as a string."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ValueError(f"{name} must be a path, got {value!r}")
    return str(os.fspath(value))


def worker_class(value: Any, name: str) -> type[Any] | None:
    """None, or a class (the trainer checks that it is a KerasWorker)."""
    if value is not None and not isinstance(value, type):
        raise TypeError(f"{name} must subclass KerasWorker, got {value!r}")
    return value

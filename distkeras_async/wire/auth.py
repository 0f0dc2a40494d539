"""Challenge-response authentication on a per-run secret (HMAC-SHA256).

The server proves nothing with its port and the client proves nothing with its address:
both prove they hold the run's secret. The client answers the server's nonce (so a proof
recorded on one connection is useless on another), and the server answers the client's
nonce in its welcome (so a worker never trains from an impostor's weights). The worker id
and attempt are bound into the client's proof, so a proof cannot be re-labelled either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

NONCE_BYTES = 32

# Fewer than 16 bytes of secret is guessable offline from one recorded handshake.
MIN_SECRET_BYTES = 16

_CLIENT = b"distkeras-async/1 client"
_SERVER = b"distkeras-async/1 server"


def new_secret() -> bytes:
    """A fresh random secret for one training run."""
    return secrets.token_bytes(32)


def new_nonce() -> bytes:
    """A fresh random nonce for one handshake."""
    return secrets.token_bytes(NONCE_BYTES)


def check_secret(secret: bytes) -> bytes:
    """Validate a secret and return it.

    Raises:
        ValueError: if the secret is not bytes or shorter than ``MIN_SECRET_BYTES``.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} random bytes")
    return bytes(secret)


def client_proof(secret: bytes, server_nonce: bytes, worker: int, attempt: int) -> bytes:
    """What a worker sends to prove it holds the secret, bound to this connection's nonce."""
    message = b"|".join([_CLIENT, server_nonce, str(worker).encode(), str(attempt).encode()])
    return hmac.new(secret, message, hashlib.sha256).digest()


def server_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the server sends back to prove it holds the secret too."""
    message = b"|".join([_SERVER, client_nonce, server_nonce])
    return hmac.new(secret, message, hashlib.sha256).digest()


def verify(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, received)

"""TLS helpers: the CA certificates workers verify the server with, and a test certificate.

:func:`read_ca` reads what the trainers' ``tls_ca`` accepts. Production certificates come
from your own CA; :func:`write_self_signed_certificate` makes a throwaway one for an IP
address so that ``ssl_context``/``tls_ca`` can be exercised end to end (tests, benchmarks);
it needs the ``cryptography`` package (in the ``test`` extra), imported only when called.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl


def write_self_signed_certificate(
    folder: str | os.PathLike[str], host: str = "127.0.0.1", days: int = 1
) -> tuple[str, str]:
    """Write a self-signed ECDSA certificate for ``host`` and its key as PEM files.

    Args:
        folder: an existing directory to write ``cert.pem`` and ``key.pem`` into.
        host: the IP address the certificate is for (its subjectAltName).
        days: days the certificate is valid.

    Returns:
        ``(certificate path, key path)``. The certificate is its own CA: give it to the
        clients as ``tls_ca`` (or ``cafile``).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"distkeras-async {host}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    # Only the owner may read the private key.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def read_ca(value: str | bytes) -> str:
    """CA certificates as PEM text, from PEM text or bytes or a path to a PEM file.

    Raises:
        ValueError: if it is neither, or ``ssl`` cannot load it.
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if "-----BEGIN CERTIFICATE-----" not in text:
        if not os.path.isfile(text):
            raise ValueError(f"tls_ca is neither PEM text nor a file: {text[:80]!r}")
        with open(text, encoding="ascii", errors="replace") as f:
            text = f.read()
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"tls_ca holds no usable CA certificate: {exc}") from exc
    return text

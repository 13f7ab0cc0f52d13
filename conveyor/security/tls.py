"""TLS contexts for the broker port and its clients.

Both sides require TLS 1.2 at least; TLS 1.3 is negotiated whenever both ends speak it
(OpenSSL prefers the highest common version). For TLS 1.2 only forward-secret AEAD
suites (ECDHE with AES-GCM or ChaCha20-Poly1305) are allowed. Clients always verify the
broker's certificate and host name; the broker asks for client certificates only when
given a CA to verify them against (mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from conveyor.errors import ConfigError

StrPath = str | Path

# TLS 1.2 suites; TLS 1.3 suites are configured separately by OpenSSL and are all AEAD.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(
    cert_file: StrPath, key_file: StrPath, client_ca_file: StrPath | None = None
) -> ssl.SSLContext:
    """A server-side context; with ``client_ca_file``, clients must show a certificate from it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert_file, key_file)
    if client_ca_file is not None:
        _load_ca(ctx, client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    ca_file: StrPath | None = None,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
) -> ssl.SSLContext:
    """A client-side context that verifies the broker against ``ca_file``.

    Without ``ca_file`` the system's trusted CAs are used (for a broker with a public
    certificate). ``cert_file``/``key_file`` present a client certificate for mutual TLS;
    ``key_file`` may be omitted when the key is inside ``cert_file``.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    _harden(ctx)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(ctx, ca_file)
    if cert_file is not None:
        _load_chain(ctx, cert_file, key_file)
    elif key_file is not None:
        raise ConfigError("a client key was given without its certificate")
    return ctx


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION


def _load_chain(ctx: ssl.SSLContext, cert_file: StrPath, key_file: StrPath | None) -> None:
    for path in (cert_file, key_file):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TLS file not found: {path}")
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot load certificate {cert_file} with key {key_file or cert_file}: {exc}"
        ) from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ConfigError("encrypted private keys are not supported; decrypt the key file")


def _load_ca(ctx: ssl.SSLContext, ca_file: StrPath) -> None:
    if not Path(ca_file).is_file():
        raise ConfigError(f"CA file not found: {ca_file}")
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot load CA certificates from {ca_file}: {exc}") from None

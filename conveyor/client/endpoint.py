"""Where a broker is and how to reach it: settings resolved into an :class:`Endpoint`.

Shared by the clients and the worker: an argument beats the environment, which beats the
files in ``$CONVEYOR_HOME`` (:func:`conveyor.config.resolve_client_settings`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from conveyor.config import ClientSettings, resolve_client_settings
from conveyor.errors import ConfigError
from conveyor.security.tls import client_context


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a broker is and how to authenticate to it."""

    host: str
    port: int
    ssl_context: ssl.SSLContext
    token: str | None
    name: str
    ca_file: Path | None = None
    token_source: str = ""  # where the token came from ("--token (token= in Python)", a file)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def make_endpoint(
    url: str | None,
    token: str | None,
    ca: str | Path | None,
    cert: str | Path | None,
    key: str | Path | None,
    home: str | Path | None,
    name: str,
) -> Endpoint:
    settings: ClientSettings = resolve_client_settings(
        broker_url=url,
        token=token,
        ca=str(ca) if ca is not None else None,
        home=str(home) if home is not None else None,
        cert=str(cert) if cert is not None else None,
        key=str(key) if key is not None else None,
    )
    if settings.ca_file is None:
        raise ConfigError(
            "no CA certificate to verify the broker with: give --ca FILE (ca=... in Python) "
            f"or set CONVEYOR_CA; none was found at {settings.home / 'ca.pem'} "
            "(the broker writes ca.pem into its home, $CONVEYOR_HOME, on first start)"
        )
    if settings.token is None:
        raise ConfigError(
            "no token to authenticate with: give --token TOKEN (token=... in Python) or set "
            f"CONVEYOR_TOKEN; there is none at {settings.home / 'admin.token'} (the broker "
            "writes an admin token there on first start; `conveyor token create` makes more)"
        )
    host, port = settings.address
    try:
        ctx = client_context(settings.ca_file, settings.cert_file, settings.key_file)
    except ConfigError as exc:
        raise ConfigError(f"{exc} ({_tls_hint(settings, str(exc))})") from None
    return Endpoint(host, port, ctx, settings.token, name, settings.ca_file, settings.token_source)


def _tls_hint(settings: ClientSettings, message: str) -> str:
    """Which setting a TLS file error is about, and where it came from."""
    if settings.ca_file is not None and str(settings.ca_file) in message:
        return (
            f"the CA came from {settings.ca_source}; fix it or give another with --ca / CONVEYOR_CA"
        )
    return "the client certificate and key come from --cert / --key or CONVEYOR_CERT / CONVEYOR_KEY"

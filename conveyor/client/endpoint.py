"""Where the brokers are and how to reach them: settings resolved into an :class:`Endpoint`.

Shared by the clients and the worker: an argument beats the environment, which beats the
files in ``$CONVEYOR_HOME`` (:func:`conveyor.config.resolve_client_settings`). An endpoint
holds one :class:`Address` or several (``conveyor://a:65432,b:65432``) that share the CA,
the client certificate and the token; each connection checks the certificate against the
host it dials (:mod:`conveyor.client.failover` picks which).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from conveyor.config import ClientSettings, resolve_client_settings
from conveyor.errors import ConfigError
from conveyor.security.tls import client_context


class Address(NamedTuple):
    """One broker's host and port; ``str()`` gives ``host:port`` (IPv6 in brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the brokers are (one address or several, in the order given) and how to
    authenticate to them."""

    addresses: tuple[Address, ...]
    ssl_context: ssl.SSLContext
    token: str | None
    name: str
    ca_file: Path | None = None
    token_source: str = ""  # where the token came from ("--token (token= in Python)", a file)

    @property
    def host(self) -> str:
        """The first address's host."""
        return self.addresses[0].host

    @property
    def port(self) -> int:
        """The first address's port."""
        return self.addresses[0].port

    @property
    def address(self) -> str:
        """Every address, comma-separated, for messages."""
        return ",".join(map(str, self.addresses))


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
    addresses = tuple(Address(host, port) for host, port in settings.addresses)
    try:
        ctx = client_context(settings.ca_file, settings.cert_file, settings.key_file)
    except ConfigError as exc:
        raise ConfigError(f"{exc} ({_tls_hint(settings, str(exc))})") from None
    return Endpoint(addresses, ctx, settings.token, name, settings.ca_file, settings.token_source)


def _tls_hint(settings: ClientSettings, message: str) -> str:
    """Which setting a TLS file error is about, and where it came from."""
    if settings.ca_file is not None and str(settings.ca_file) in message:
        return (
            f"the CA came from {settings.ca_source}; fix it or give another with --ca / CONVEYOR_CA"
        )
    return "the client certificate and key come from --cert / --key or CONVEYOR_CERT / CONVEYOR_KEY"

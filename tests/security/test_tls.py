"""TLS contexts against a real TLS server on 127.0.0.1: who gets through and who does not."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.errors import ConfigError
from conveyor.security import certs
from conveyor.security.tls import client_context, server_context

PING = b"ping\n"


@dataclass
class Pki:
    dir: Path
    ca: Path
    server: certs.CertPaths
    client: certs.CertPaths
    other_ca: Path  # a CA that did not sign anything the server uses
    other_client: certs.CertPaths  # a client certificate from that other CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    home = tmp_path_factory.mktemp("pki")
    certs.ensure_ca_and_server(home)
    client = certs.make_client_cert(home, "alice")
    other = tmp_path_factory.mktemp("other")
    certs.ensure_ca_and_server(other)
    return Pki(
        home,
        home / "ca.pem",
        certs.server_paths(home),
        client,
        other / "ca.pem",
        certs.make_client_cert(other, "mallory"),
    )


@contextlib.asynccontextmanager
async def echo_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that echoes one line; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readline())
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def exchange(
    port: int, ctx: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[bytes, str | None]:
    """Connect, send one line, return the echo (b"" if the server hung up) and TLS version."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=hostname), 10
    )
    try:
        version = writer.get_extra_info("ssl_object").version()
        writer.write(PING)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10), version
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True if the connection fails, at the handshake or at the first read after it.

    With TLS 1.3 the server checks a client certificate after the client has finished its
    side of the handshake, so a refusal can surface as an error on read or as EOF.
    """
    try:
        echo, _ = await exchange(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    return echo != PING


async def test_handshake_succeeds_and_prefers_tls_1_3(pki: Pki) -> None:
    async with echo_server(server_context(pki.server.cert, pki.server.key)) as port:
        assert await exchange(port, client_context(pki.ca)) == (PING, "TLSv1.3")
        assert await exchange(port, client_context(pki.ca), "127.0.0.1") == (PING, "TLSv1.3")


async def test_a_tls_1_2_client_is_still_served(pki: Pki) -> None:
    ctx = client_context(pki.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with echo_server(server_context(pki.server.cert, pki.server.key)) as port:
        assert await exchange(port, ctx) == (PING, "TLSv1.2")


async def test_client_trusting_another_ca_refuses_the_server(pki: Pki) -> None:
    async with echo_server(server_context(pki.server.cert, pki.server.key)) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            await exchange(port, client_context(pki.other_ca))


async def test_client_checks_the_host_name(pki: Pki) -> None:
    async with echo_server(server_context(pki.server.cert, pki.server.key)) as port:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname|IP address"):
            await exchange(port, client_context(pki.ca), "broker.example.com")


def tls_1_1_only_client(ca: Path) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 forbids TLS 1.1 at the default level
    ctx.load_verify_locations(ca)
    return ctx


def permissive_server(pki: Pki) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    return ctx


async def test_a_tls_1_1_client_is_refused(pki: Pki) -> None:
    # Control: the old client really can talk TLS 1.1 to a server that allows it, so the
    # refusal below comes from our server's minimum version, not from the client.
    try:
        async with echo_server(permissive_server(pki)) as port:
            control = await exchange(port, tls_1_1_only_client(pki.ca))
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {exc}")
    assert control == (PING, "TLSv1.1")

    async with echo_server(server_context(pki.server.cert, pki.server.key)) as port:
        # OpenSSL answers with a protocol_version alert, or asyncio just resets.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await exchange(port, tls_1_1_only_client(pki.ca))


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: Pki) -> None:
    ctx = server_context(pki.server.cert, pki.server.key, client_ca_file=pki.ca)
    async with echo_server(ctx) as port:
        assert await refused(port, client_context(pki.ca))
        foreign = client_context(pki.ca, pki.other_client.cert, pki.other_client.key)
        assert await refused(port, foreign)
        good = client_context(pki.ca, pki.client.cert, pki.client.key)
        assert await exchange(port, good) == (PING, "TLSv1.3")


async def test_without_client_ca_no_client_certificate_is_needed(pki: Pki) -> None:
    async with echo_server(server_context(pki.server.cert, pki.server.key)) as port:
        assert not await refused(port, client_context(pki.ca))


def test_context_settings(pki: Pki) -> None:
    server = server_context(pki.server.cert, pki.server.key)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_NONE
    mtls = server_context(pki.server.cert, pki.server.key, pki.ca)
    assert mtls.verify_mode == ssl.CERT_REQUIRED
    client = client_context(pki.ca)
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.check_hostname is True
    assert client.verify_mode == ssl.CERT_REQUIRED
    tls12 = {c["name"] for c in server.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(name.startswith("ECDHE-") for name in tls12)
    assert not any("CBC" in name or name.endswith("SHA") for name in tls12)


def test_missing_or_wrong_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        server_context(tmp_path / "nope.pem", pki.server.key)
    with pytest.raises(ConfigError, match="not found"):
        client_context(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"mismatch|cannot load"):
        server_context(pki.server.cert, pki.client.key)
    with pytest.raises(ConfigError, match="without its certificate"):
        client_context(pki.ca, key_file=pki.client.key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load CA"):
        client_context(garbage)

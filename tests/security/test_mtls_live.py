"""Mutual TLS against a running broker: only certificates from the client CA get in.

The broker is configured with ``client_ca_file``; a client without a certificate, with
one from another CA, with an expired one or with a certificate not meant for clients
never reaches HELLO, and the broker keeps serving the clients that do it right.
Tokens are still required on top of the certificate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from pathlib import Path

import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.client.aio import AsyncClient
from conveyor.errors import AuthenticationError, ConnectionLost
from conveyor.protocol.codec import FrameDecoder, encode_frame
from conveyor.security import certs
from conveyor.security.tls import client_context


@pytest.fixture
def broker_config(home: Path) -> BrokerConfig:
    return BrokerConfig(port=0, store_url="memory://", home=home, client_ca_file=home / "ca.pem")


async def attempt(broker: Broker, home: Path, cert: Path | None, key: Path | None) -> str:
    """TLS (maybe with a client certificate), then HELLO with the admin token.

    Returns "welcome", or how the broker refused: with TLS 1.3 the client's side of the
    handshake can finish before the broker has checked its certificate, so the refusal
    shows either as a failed handshake or as an alert/close at the first read.
    """
    ctx = client_context(home / "ca.pem", cert, key)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", broker.port, ssl=ctx, server_hostname="127.0.0.1"),
            5,
        )
    except (ssl.SSLError, ConnectionError) as exc:
        return f"handshake failed: {exc}"
    try:
        token = (home / "admin.token").read_text().strip()
        writer.write(encode_frame({"t": "hello", "v": 1, "token": token}))
        try:
            data = await asyncio.wait_for(reader.read(65536), 5)
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused after handshake: {exc}"
        if not data:
            return "closed without a frame"
        decoder = FrameDecoder()
        decoder.receive_data(data)
        frame = decoder.next_frame()
        return str(frame["t"]) if isinstance(frame, dict) else f"garbage: {data[:40]!r}"
    finally:
        writer.transport.abort()


async def job_done_by_certified_client(broker: Broker, home: Path) -> None:
    alice = certs.make_client_cert(home, "alice", force=True)
    async with AsyncClient(broker.url, home=home, cert=alice.cert, key=alice.key) as c:
        assert await (await c.submit("add", a=20, b=22)).result(timeout=10) == 42


@pytest.fixture
async def certified_worker(start_worker, home: Path) -> None:
    paths = certs.make_client_cert(home, "worker-1")
    await start_worker(cert=paths.cert, key=paths.key)


async def test_certified_client_works(broker: Broker, home: Path, certified_worker) -> None:
    alice = certs.make_client_cert(home, "alice")
    assert await attempt(broker, home, alice.cert, alice.key) == "welcome"
    await job_done_by_certified_client(broker, home)
    assert broker.metrics["tls_failures"] == 0


def other_ca_cert(tmp_path: Path) -> certs.CertPaths:
    other = tmp_path / "other-ca"
    certs.make_ca(other)
    return certs.make_client_cert(other, "mallory")


def expired_cert(home: Path) -> certs.CertPaths:
    return certs.make_client_cert(home, "old", now=time.time() - 1000 * 86400)  # 825-day leaf


def server_cert_as_client(home: Path) -> certs.CertPaths:
    return certs.server_paths(home)  # right CA, but made for serverAuth only


@pytest.mark.parametrize(
    "make",
    [
        lambda home, tmp: None,
        lambda home, tmp: other_ca_cert(tmp),
        lambda home, tmp: expired_cert(home),
        lambda home, tmp: server_cert_as_client(home),
    ],
    ids=["no_certificate", "other_ca", "expired", "server_certificate"],
)
async def test_bad_client_certificates_are_refused(
    broker: Broker,
    home: Path,
    tmp_path: Path,
    certified_worker,
    caplog: pytest.LogCaptureFixture,
    make,
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.broker")
    paths = make(home, tmp_path)
    cert, key = (None, None) if paths is None else (paths.cert, paths.key)
    outcome = await attempt(broker, home, cert, key)
    assert outcome.startswith(("handshake failed", "refused after", "closed without")), outcome
    # the client library fails the same way, with the same valid admin token
    lib = AsyncClient(broker.url, home=home, cert=cert, key=key, reconnect_timeout=0)
    with pytest.raises((ssl.SSLError, ConnectionError, ConnectionLost)):
        await lib.connect()
    await lib.close()
    await job_done_by_certified_client(broker, home)  # the broker keeps serving
    assert broker.metrics["tls_failures"] == 2
    assert broker.metrics["connections_total"] == 2  # only the worker and alice got a session
    assert "TLS handshake with 127.0.0.1:" in caplog.text


async def test_a_certificate_does_not_replace_the_token(
    broker: Broker, home: Path, certified_worker
) -> None:
    alice = certs.make_client_cert(home, "alice")
    c = AsyncClient(
        broker.url,
        home=home,
        cert=alice.cert,
        key=alice.key,
        token="cvy_" + "B" * 43,
        reconnect_timeout=0,
    )
    with pytest.raises(AuthenticationError):
        await c.connect()
    await c.close()
    assert broker.metrics["auth_failures"] == 1
    await job_done_by_certified_client(broker, home)


async def test_cli_passes_client_certificates(broker: Broker, home: Path, certified_worker) -> None:
    import os
    import sys

    paths = certs.make_client_cert(home, "cli-user")
    env = dict(os.environ, CONVEYOR_HOME=str(home), CONVEYOR_BROKER_URL=broker.url)

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "conveyor", *args),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, out.decode()

    code, out = await cli(
        "submit", "add", "a=1", "b=2", "--wait", "--cert", str(paths.cert), "--key", str(paths.key)
    )
    assert (code, out.strip()) == (0, "3")
    code, out = await cli("stats")  # no certificate: refused
    assert code == 3 and "Error" in out  # cannot use the broker: exit 3

"""``conveyor token`` away from the broker's home: over the protocol with an admin token,
or a clear refusal (never a token that no broker knows)."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor import AsyncClient
from conveyor.broker.app import Broker
from conveyor.cli import main
from conveyor.errors import AuthenticationError


@pytest.fixture
def laptop(home: Path, tmp_path: Path) -> Path:
    """Another host's home: the broker's CA and an admin token, but no token registry."""
    path = tmp_path / "laptop"
    path.mkdir()
    for name in ("ca.pem", "admin.token"):
        shutil.copy(home / name, path / name)
    return path


async def token(home: Path, *args: str, **env: str) -> Result:
    environ = {"CONVEYOR_HOME": str(home), **env}
    return await asyncio.to_thread(CliRunner().invoke, main, ["token", *args], env=environ)


async def test_token_commands_talk_to_the_broker_when_there_is_no_local_registry(
    broker: Broker, laptop: Path
) -> None:
    url = {"CONVEYOR_BROKER_URL": broker.url}
    created = await token(
        laptop, "create", "--role", "producer", "--name", "ci", "--ttl", "1d", **url
    )
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip()
    assert re.fullmatch(r"cvy_\S+", plaintext) and "expires" in created.stderr
    assert not (laptop / "tokens.json").exists()  # nothing written here: the broker has it
    async with AsyncClient(broker.url, token=plaintext, ca=laptop / "ca.pem") as c:
        assert (await c.stats())["workers"] == []  # the new token works

    listed = await token(laptop, "list", **url)
    assert re.search(r"^ci\s+producer\s+active\s", listed.stdout, re.MULTILINE), listed.output
    assert plaintext not in listed.output

    revoked = await token(laptop, "revoke", "ci", **url)
    assert (revoked.exit_code, revoked.stdout.strip()) == (0, "revoked token 'ci'")
    with pytest.raises(AuthenticationError):
        await AsyncClient(broker.url, token=plaintext, ca=laptop / "ca.pem").connect()
    unknown = await token(laptop, "revoke", "ghost", **url)
    assert unknown.exit_code == 1 and "no token named 'ghost'" in unknown.stderr


async def test_an_explicit_broker_wins_over_the_local_registry(broker: Broker, home: Path) -> None:
    created = await token(home, "create", "--role", "worker", "--broker", broker.url)
    assert created.exit_code == 0, created.output
    names = [t.name for t in broker.core.token_list()]
    assert any(n.startswith("worker-") for n in names)


async def test_a_producer_token_is_told_it_needs_an_admin_one(
    broker: Broker, client: AsyncClient, laptop: Path
) -> None:
    producer = (await client.token_create("producer", "p1"))["token"]
    result = await token(laptop, "list", "--token", producer, CONVEYOR_BROKER_URL=broker.url)
    assert result.exit_code == 3
    assert "forbidden" in result.stderr and "need an admin token" in result.stderr


async def test_no_registry_and_no_broker_refuses_without_printing_a_token(laptop: Path) -> None:
    result = await token(
        laptop, "create", "--role", "worker", CONVEYOR_BROKER_URL="conveyor://127.0.0.1:9"
    )
    assert result.exit_code == 3
    assert result.stdout == ""
    assert f"no token registry at {laptop / 'tokens.json'} and no broker to ask" in result.stderr
    assert "cannot reach the broker at 127.0.0.1:9" in result.stderr


async def test_the_clients_token_methods_return_the_reply_maps(client: AsyncClient) -> None:
    created = await client.token_create("worker", "w1", ttl=60)
    assert created["token"].startswith("cvy_") and created["info"]["name"] == "w1"
    listed = await client.token_list()
    assert [t["name"] for t in listed["tokens"]] == ["admin", "w1"]
    assert await client.token_revoke("w1") == {"revoked": "w1"}


async def test_a_running_worker_process_stops_when_its_token_is_revoked(
    broker: Broker, home: Path
) -> None:
    from tests.cli.helpers import cli_env, read_until, spawn

    created = await token(home, "create", "--role", "worker", "--name", "w-cli")
    assert created.exit_code == 0, created.output
    worker = await spawn(
        *("worker", "--tasks", "conveyor.examples", "--broker", broker.url),
        *("--home", str(home), "--concurrency", "1"),
        env=cli_env(CONVEYOR_TOKEN=created.output.split()[0]),  # stdout: the token first
    )
    try:
        assert worker.stderr is not None
        await read_until(worker.stderr, "ready")
        await broker.wait_until(lambda: len(broker.dispatcher.workers) == 1)
        revoked = await token(home, "revoke", "w-cli")  # edits tokens.json, as on the host
        assert revoked.exit_code == 0, revoked.output
        _, err = await asyncio.wait_for(worker.communicate(), 20)
        assert worker.returncode == 1, err
        assert "unauthorized: token revoked" in err.decode(), err
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert not broker.dispatcher.workers
    assert broker.metrics["token_ended_connections"] == 1
    assert broker.metrics["auth_failures"] == 0  # it did not come back with the dead token

"""End-to-end payload encryption: real broker, real workers, real TLS sockets.

The broker's store must never hold arguments, results or error messages in the clear.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from conveyor import AsyncClient, Client, JobState
from conveyor.broker.app import Broker
from conveyor.cli.jobs import status as status_command
from conveyor.cli.submit import result as result_command
from conveyor.errors import JobFailed, PayloadDecryptError
from conveyor.protocol.payload import unpack_call
from conveyor.security.payload import PayloadCipher, generate_key, is_sealed, is_sealed_call

if TYPE_CHECKING:
    from tests.conftest import StartWorker

KEY = generate_key()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "payload.keys"
    path.write_text(f"# test key\n{KEY}\n")
    return path


@pytest.fixture
async def sealing_client(broker: Broker, home: Path) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(broker.url, home=home, payload_key=KEY)
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


async def stored(broker: Broker, job_id: str) -> str:
    job = await broker.store.job_get(job_id)
    assert job is not None
    return repr(job)


async def test_encrypted_round_trip_hides_everything_from_the_broker(
    sealing_client: AsyncClient, broker: Broker, start_worker: StartWorker, key_file: Path
) -> None:
    await start_worker(payload_key_file=key_file)
    handle = await sealing_client.submit("reverse_string", data="secret")
    queued = await broker.store.job_get(handle.id)
    assert queued is not None and is_sealed_call(*unpack_call(queued.payload))
    assert await handle.result(timeout=10) == "terces"
    in_store = await stored(broker, handle.id)
    assert "secret" not in in_store and "terces" not in in_store
    job = await handle.get()
    assert job.state is JobState.COMPLETED
    assert (job.args, job.kwargs, job.result) == ([], {"data": "secret"}, "terces")


async def test_batch_submit_is_sealed(
    sealing_client: AsyncClient, broker: Broker, start_worker: StartWorker
) -> None:
    await start_worker(payload_key_file=PayloadCipher.from_keys(KEY))
    handles = await sealing_client.submit_many([("add", {"a": i, "b": 1000}) for i in range(20)])
    assert [await h.result(timeout=10) for h in handles] == [i + 1000 for i in range(20)]
    for h in handles:
        assert "1000" not in await stored(broker, h.id)


async def test_worker_without_the_key_fails_the_job_once(
    sealing_client: AsyncClient, broker: Broker, start_worker: StartWorker
) -> None:
    await start_worker()  # no key
    handle = await sealing_client.submit("reverse_string", data="secret", retries=5)
    with pytest.raises(JobFailed, match="PayloadDecryptError"):
        await handle.result(timeout=10)
    job = await handle.get()
    assert job.state is JobState.DEAD and job.attempts == 1
    assert job.error is not None and job.error["type"] == "PayloadDecryptError"
    assert "no payload key" in job.error["message"]
    assert [e["event"] for e in job.events][-1] == "dead"


async def test_worker_with_a_wrong_key_fails_the_job_once(
    sealing_client: AsyncClient, start_worker: StartWorker
) -> None:
    await start_worker(payload_key_file=PayloadCipher.from_keys(generate_key()))
    handle = await sealing_client.submit("reverse_string", data="secret")
    job = await handle.wait(timeout=10)
    assert job.state is JobState.DEAD and job.attempts == 1
    assert job.error is not None and job.error["type"] == "PayloadDecryptError"


async def test_failing_task_error_is_sealed_in_store_but_readable(
    sealing_client: AsyncClient, broker: Broker, start_worker: StartWorker, key_file: Path
) -> None:
    await start_worker(payload_key_file=key_file)
    handle = await sealing_client.submit("fail", message="boom-secret", retries=1, retry_backoff=0)
    with pytest.raises(JobFailed, match="boom-secret"):
        await handle.result(timeout=10)
    raw = await broker.store.job_get(handle.id)
    assert raw is not None and raw.error is not None
    assert raw.error["type"] == "RuntimeError"  # clear: retry policy and dashboards use it
    assert is_sealed(raw.error["message"]) and is_sealed(raw.error["traceback"])
    assert "boom-secret" not in repr(raw)
    job = await handle.get()
    assert job.attempts == 2  # a sealed error is still retried
    assert job.error is not None and job.error["message"] == "boom-secret"
    assert "Traceback" in job.error["traceback"]
    failed = [e for e in job.events if e["event"] == "failed"]
    assert [e["error"] for e in failed] == ["RuntimeError: boom-secret"] * 2


async def test_plain_job_on_an_encrypting_worker_stays_plain(
    client: AsyncClient, broker: Broker, start_worker: StartWorker, key_file: Path
) -> None:
    await start_worker(payload_key_file=key_file)
    handle = await client.submit("reverse_string", data="public")
    assert await handle.result(timeout=10) == "cilbup"
    assert "cilbup" in await stored(broker, handle.id)


async def test_client_without_the_key_sees_sealed_parts(
    sealing_client: AsyncClient, client: AsyncClient, start_worker: StartWorker, key_file: Path
) -> None:
    await start_worker(payload_key_file=key_file)
    handle = await sealing_client.submit("reverse_string", data="secret")
    await handle.result(timeout=10)
    job = await client.get(handle.id)
    assert is_sealed_call(job.args, job.kwargs) and is_sealed(job.result)
    with pytest.raises(PayloadDecryptError, match="encrypted"):
        await client.result(handle.id, timeout=10)


async def test_sync_client_key_from_the_environment_and_cli(
    broker: Broker,
    home: Path,
    start_worker: StartWorker,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await start_worker(payload_key_file=key_file)
    monkeypatch.setenv("CONVEYOR_PAYLOAD_KEY_FILE", str(key_file))
    monkeypatch.setenv("CONVEYOR_HOME", str(home))
    monkeypatch.setenv("CONVEYOR_BROKER_URL", broker.url)

    def produce() -> tuple[str, object]:
        with Client() as c:
            assert c.cipher is not None
            h = c.submit("to_uppercase", data="secret")
            return h.id, h.result(timeout=10)

    job_id, value = await asyncio.to_thread(produce)
    assert value == "SECRET"
    assert "SECRET" not in await stored(broker, job_id)

    def cli(command: object, *args: str, env_key: bool) -> str:
        if not env_key:
            monkeypatch.delenv("CONVEYOR_PAYLOAD_KEY_FILE", raising=False)
        out = CliRunner().invoke(command, [*args, job_id])  # type: ignore[arg-type]
        assert out.exit_code in (0, 1), out.output
        return out.output

    with_key = await asyncio.to_thread(cli, result_command, env_key=True)
    assert with_key.strip() == '"SECRET"'
    with_flag = await asyncio.to_thread(
        cli, result_command, "--payload-key-file", str(key_file), env_key=False
    )
    assert with_flag.strip() == '"SECRET"'
    without = await asyncio.to_thread(cli, result_command, env_key=False)
    assert "encrypted" in without and "SECRET" not in without
    shown = await asyncio.to_thread(cli, status_command, env_key=False)
    assert "payload: encrypted" in shown
    opened = await asyncio.to_thread(
        cli, status_command, "--json", "--payload-key-file", str(key_file), env_key=False
    )
    assert '"SECRET"' in opened and "payload: encrypted" not in opened


async def test_sealed_payloads_carry_big_integers(
    sealing_client: AsyncClient, broker: Broker, start_worker: StartWorker
) -> None:
    await start_worker(payload_key_file=PayloadCipher.from_keys(KEY))
    handle = await sealing_client.submit("add", a=2**70, b=1)
    assert await handle.result(timeout=10) == 2**70 + 1
    assert str(2**70) not in await stored(broker, handle.id)

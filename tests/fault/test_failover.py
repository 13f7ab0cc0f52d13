"""kill -9 one of two brokers mid-run: the producer and the workers, given both addresses,
fail over to the other; no acknowledged job is lost (separate SQLite stores here, so the
killed broker's jobs finish once it is back)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from conveyor import AsyncClient, JobState
from conveyor.client import failover
from tests.fault.test_broker_crash import _free_port, _start_broker

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
N_JOBS = 600
KILL_AFTER = 200
IN_FLIGHT = 8


async def _start_worker(home: Path, url: str, name: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "conveyor", "worker", "--broker", url, "--home", str(home)),
        *("--tasks", "conveyor.examples", "--name", name, "--log-level", "ERROR"),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


async def _workers_on(client: AsyncClient, count: int) -> None:
    """Until the client's broker sees ``count`` workers (bounded by the caller)."""
    while len((await client.stats())["workers"]) < count:
        await asyncio.sleep(0.05)  # the broker has no "worker joined" wait on the wire


async def test_kill_9_one_of_two_brokers_producer_and_workers_fail_over(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failover, "first_index", lambda n: 0)  # this producer starts on A
    port_a, port_b = _free_port(), _free_port()
    url_a = f"conveyor://127.0.0.1:{port_a}"
    both = f"{url_a},127.0.0.1:{port_b}"
    procs: list[asyncio.subprocess.Process] = []
    try:
        broker_a = await _start_broker(home, port_a, tmp_path / "a.db")
        procs.append(broker_a)
        # B is not up yet, so both workers land on A whatever address they start at
        procs += [await _start_worker(home, both, f"w{n}") for n in (1, 2)]
        async with AsyncClient(url_a, home=home) as on_a:
            await asyncio.wait_for(_workers_on(on_a, 2), 30)
        procs.append(await _start_broker(home, port_b, tmp_path / "b.db"))

        ids = [f"fo-{n:04}" for n in range(N_JOBS)]
        acked: list[str] = []
        enough = asyncio.Event()
        async with AsyncClient(both, home=home, reconnect_timeout=60) as producer:
            todo = iter(enumerate(ids))

            async def submitter() -> None:  # IN_FLIGHT of these: submits cut off by the kill
                for n, job_id in todo:
                    acked.append((await producer.submit("add", a=n, b=1, job_id=job_id)).id)
                    if len(acked) >= KILL_AFTER:
                        enough.set()

            submitters = [asyncio.ensure_future(submitter()) for _ in range(IN_FLIGHT)]
            await asyncio.wait_for(enough.wait(), 30)
            assert producer.address == f"127.0.0.1:{port_a}"
            broker_a.send_signal(signal.SIGKILL)
            await broker_a.wait()
            await asyncio.wait_for(asyncio.gather(*submitters), 60)
            assert sorted(acked) == ids  # each submit answered once, with the id it chose
            assert producer.address == f"127.0.0.1:{port_b}"
            # both workers came over to B and run what B was given
            await asyncio.wait_for(_workers_on(producer, 2), 30)
            on_b = {j.id: j for j in await producer.get_many(ids)}
            for job_id in on_b:
                await producer.wait(job_id, timeout=30)
            on_b = {j.id: j for j in await producer.get_many(ids)}

        # A comes back on its database; a worker of its own finishes what it acknowledged
        broker_a = await _start_broker(home, port_a, tmp_path / "a.db")
        procs.append(broker_a)
        procs.append(await _start_worker(home, url_a, "w3"))
        async with AsyncClient(url_a, home=home) as on_a:
            known = {j.id for j in await on_a.get_many(ids)}
            for job_id in known:
                await on_a.wait(job_id, timeout=30)
            on_a_jobs = {j.id: j for j in await on_a.get_many(ids)}

        assert set(on_a_jobs) | set(on_b) == set(ids)  # none lost
        for jobs in (on_a_jobs, on_b):
            assert all(j.state is JobState.COMPLETED for j in jobs.values())
        assert len(on_a_jobs) >= KILL_AFTER and on_b
        both_stores = set(on_a_jobs) & set(on_b)
        print(
            f"\nfailover kill -9: {N_JOBS} submits, {len(on_a_jobs)} on A, {len(on_b)} on B, "
            f"{len(both_stores)} on both (stored by A, its ack lost in the kill, resent to B)"
        )
        assert len(both_stores) <= IN_FLIGHT  # only a submit in flight at the kill
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()

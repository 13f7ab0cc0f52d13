"""The cost budget (``--scenario budget``): CPU microseconds per job in each stage, alone.

The end-to-end figures say how fast the whole is; this says where its time goes. Each
stage runs in this process on its own, timed with the process's CPU clock (so a busy
machine slows it less than it slows wall-clock figures), best of three rounds:

- client: building one job's submit map (:func:`conveyor.client._base.job_spec`: the id,
  the JSON check, packing the arguments);
- codec: one SUBMIT frame of 1,000 jobs encoded and decoded, and a one-job frame, the
  per-frame cost a single submit pays;
- broker: checking one submitted job (:func:`conveyor.validation.parse_job`);
- store: insert, claim and complete through the store interface and the lifecycle, in
  batches of 100, for ``memory://`` and SQLite (with its commits), and SQLite inserting
  one job per commit, as a single durable submit does;
- worker: running a no-op task call (:func:`conveyor.worker.execute.run_sync`).

Then the real system, measured from ``/proc``: the broker's and the workers' CPU per job
during a drain, and the client's and the broker's CPU per ``Client.submit()``. What the
stages alone do not add up to is the rest: the event loop, TLS, the sockets.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from conveyor import lifecycle
from conveyor.bench.paths import _async, _client
from conveyor.bench.system import (
    LocalSystem,
    cpu_seconds,
    progress,
    wait_completed,
    wait_workers,
)
from conveyor.client._base import job_spec
from conveyor.examples import noop
from conveyor.job import JobRecord
from conveyor.lifecycle import Outcome
from conveyor.protocol.codec import FrameDecoder, encode_frame
from conveyor.protocol.payload import EMPTY_CALL, pack
from conveyor.stores import Claimant, Store, open_store
from conveyor.validation import parse_job
from conveyor.worker.execute import run_sync
from conveyor.worker.tasks import TaskDef

ROUNDS = 3
BATCH = 100
LEASE = 30.0

#: (result key, label) in the order the table shows them
STAGES = (
    ("budget_client_spec_us", "client: one job's submit map"),
    ("budget_codec_batch_us", "codec: encode + decode, per job of a 1,000-job frame"),
    ("budget_codec_frame_us", "codec: encode + decode, a one-job frame"),
    ("budget_validate_us", "broker: check one submitted job"),
    ("budget_store_memory_us", "store memory://: insert + claim + complete"),
    ("budget_store_sqlite_us", "store SQLite: insert + claim + complete, batches of 100"),
    ("budget_store_sqlite_single_us", "store SQLite: one durable insert per commit"),
    ("budget_worker_run_us", "worker: run a no-op task call"),
    ("budget_system_broker_drain_us", "system: broker CPU per job, drain"),
    ("budget_system_workers_drain_us", "system: workers' CPU per job, drain"),
    ("budget_system_client_submit_us", "system: client CPU per Client.submit()"),
    ("budget_system_broker_submit_us", "system: broker CPU per Client.submit()"),
)


def _best(fn: Callable[[], int]) -> float:
    """CPU microseconds per item of ``fn`` (which returns how many items it did), best of
    :data:`ROUNDS`."""
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        items = fn()
        best = min(best, (time.process_time() - t0) / items)
    return best * 1e6


async def _best_async(fn: Callable[[], Awaitable[int]]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        items = await fn()
        best = min(best, (time.process_time() - t0) / items)
    return best * 1e6


def _specs(n: int) -> list[dict[str, Any]]:
    return [job_spec("add", [i, 1], {}) for i in range(n)]


def _codec(items: int, per_frame: int) -> Callable[[], int]:
    frame = {"t": "submit", "rid": 1, "jobs": _specs(per_frame)}

    def run() -> int:
        decoder = FrameDecoder()
        for _ in range(items // per_frame):
            decoder.receive_data(encode_frame(frame))
            decoder.next_frame()
        return items

    return run


def _validate(n: int) -> Callable[[], int]:
    raws = _specs(n)
    now = time.time()

    def run() -> int:
        for raw in raws:
            parse_job(raw, now)
        return n

    return run


def _records(n: int) -> list[JobRecord]:
    return [JobRecord(id=spec["id"], task="add", payload=spec["payload"]) for spec in _specs(n)]


async def _store_cycle(store: Store, n: int, batch: int) -> int:
    """Insert ``n`` jobs, claim them and complete them, ``batch`` at a time."""
    now = time.time()
    claimant = Claimant("bench", ("default",), ("add",))
    result = pack(2)
    records = _records(n)
    for start in range(0, n, batch):
        born = [lifecycle.born(job, now) for job in records[start : start + batch]]
        await store.job_insert_many(born)
        claimed = await store.job_claim(claimant, batch, LEASE, now)
        done = []
        for job in claimed:
            assert job.lease is not None
            outcome = Outcome(id=job.id, lease=job.lease, ok=True, result=result)
            done.append(lifecycle.report(job, outcome, now))
        await store.job_apply(done)
    return n


async def _store_inserts(store: Store, n: int) -> int:
    """``n`` inserts, each awaited until durable, as single submits are."""
    now = time.time()
    for job in _records(n):
        await store.job_insert_many([lifecycle.born(job, now)])
    return n


async def _store_stages(jobs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-budget-") as tmp:
        engines = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{Path(tmp) / 'budget.db'}",
        }
        for name, url in engines.items():
            store = open_store(url)
            await store.open(time.time())
            try:
                out[f"budget_store_{name}_us"] = await _best_async(
                    partial(_store_cycle, store, jobs, BATCH)
                )
                if name == "sqlite":
                    out["budget_store_sqlite_single_us"] = await _best_async(
                        partial(_store_inserts, store, max(200, jobs // 10))
                    )
            finally:
                await store.close()
    return out


def _worker_run(n: int) -> Callable[[], int]:
    definition: TaskDef = noop.__conveyor_task__

    def run() -> int:
        for _ in range(n):
            result = run_sync(definition, EMPTY_CALL)
            assert result.ok, result.error
        return n

    return run


async def _system_stages(system: LocalSystem, jobs: int) -> dict[str, float]:
    """CPU per job of the real processes: a drain (start-up left out), then single
    submits."""
    out: dict[str, float] = {}
    system.start_broker()
    async with _async(system) as c:
        await c.submit_many([("noop", [], {})] * jobs)
        await c.pause_queue("default")
        system.start_workers()
        await wait_workers(c, system.n_workers)
        pids = [system.broker_pid, *(w.pid for w in system.workers)]
        before = [cpu_seconds(pid) for pid in pids]
        await c.resume_queue("default")
        with progress("drain (budget)", jobs) as update:
            await wait_completed(c, jobs, update, timeout=1800)
        spent = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    system.stop_workers()
    out["budget_system_broker_drain_us"] = spent[0] / jobs * 1e6
    out["budget_system_workers_drain_us"] = sum(spent[1:]) / jobs * 1e6

    def singles() -> tuple[float, float]:
        n = max(500, jobs // 10)
        with _client(system) as client:
            client.submit("noop")  # connected and warm
            b0, c0 = cpu_seconds(system.broker_pid), time.process_time()
            for _ in range(n):
                client.submit("noop")
            return (time.process_time() - c0) / n, (cpu_seconds(system.broker_pid) - b0) / n

    client_cpu, broker_cpu = await asyncio.to_thread(singles)
    out["budget_system_client_submit_us"] = client_cpu * 1e6
    out["budget_system_broker_submit_us"] = broker_cpu * 1e6
    system.stop_broker()
    return out


async def run_budget(system: LocalSystem, jobs: int) -> dict[str, Any]:
    """Every stage of :data:`STAGES`: CPU microseconds per job."""
    jobs = max(jobs, 1000)
    out: dict[str, Any] = {
        "budget_client_spec_us": _best(lambda: len(_specs(jobs))),
        "budget_codec_batch_us": _best(_codec(jobs, 1000)),
        "budget_codec_frame_us": _best(_codec(min(jobs, 5000), 1)),
        "budget_validate_us": _best(_validate(jobs)),
        "budget_worker_run_us": _best(_worker_run(jobs)),
    }
    out.update(await _store_stages(jobs))
    out.update(await _system_stages(system, jobs))
    return {key: round(out[key], 1) for key, _ in STAGES if key in out}

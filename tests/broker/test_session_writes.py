"""What the broker writes to a worker, write by write: a report's ACKED waits one loop
turn for the dispatch pass the report triggered, so both leave in one write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conveyor.broker.app import Broker
from conveyor.protocol.codec import FrameDecoder
from tests.security.rawconn import Raw, admin_token


async def _one_slot_worker(broker: Broker, home: Path) -> Raw:
    raw = await Raw.open(broker.port, home)
    raw.send({"t": "hello", "v": 1, "token": admin_token(home), "name": "w"})
    assert (await raw.recv() or {})["t"] == "welcome"
    rid = raw.rid()
    ready = {"tasks": ["t"], "queues": ["default"], "concurrency": 1, "prefetch": 0}
    raw.send({"t": "ready", "rid": rid, **ready})
    await raw.until(rid)
    return raw


def _record_writes(broker: Broker) -> list[list[str]]:
    """The kinds of frame in each write the broker makes to its one worker from now on."""
    (session,) = [s for s in broker.sessions if s.worker is not None]
    transport = session.transport
    assert transport is not None
    writes: list[list[str]] = []
    decoder = FrameDecoder(max_frame_size=1 << 24)
    real_write = transport.write

    def write(data: Any) -> None:
        decoder.receive_data(bytes(data))
        kinds = []
        while isinstance(frame := decoder.next_frame(), dict):
            kinds.append(frame["t"])
        writes.append(kinds)
        real_write(data)

    transport.write = write  # type: ignore[method-assign]
    return writes


async def test_an_acked_and_the_dispatch_it_made_room_for_leave_in_one_write(
    broker: Broker, home: Path
) -> None:
    worker = await _one_slot_worker(broker, home)
    producer = await Raw.open(broker.port, home, hello=True)
    try:
        rid = producer.rid()
        jobs = [{"task": "t", "id": f"job-{i}"} for i in range(3)]
        producer.send({"t": "submit", "rid": rid, "jobs": jobs})
        await producer.until(rid)
        first = await worker.recv()
        assert first is not None and first["t"] == "dispatch"
        writes = _record_writes(broker)
        for _ in range(2):  # job-0, then job-1: each report frees the one slot
            (job,) = (first or {})["jobs"]
            worker.send({"t": "heartbeat", "running": [job["id"]]})
            worker.send(
                {"t": "report", "results": [{"id": job["id"], "lease": job["lease"], "ok": True}]}
            )
            acked = await worker.recv()
            assert acked is not None and acked["t"] == "acked"
            first = await worker.recv()
            assert first is not None and first["t"] == "dispatch"
        assert writes == [["acked", "dispatch"], ["acked", "dispatch"]]
    finally:
        await producer.close()
        await worker.close()

"""SCHEDULE: manage the broker's periodic schedules (producer and admin roles).

One frame type with an ``op``: ``add``, ``list``, ``get``, ``pause``, ``resume``,
``remove``, ``run_now`` (docs/protocol.md, section 6.7). Each checks its fields and calls
the core's :class:`~conveyor.broker.schedules.ScheduleBook`.
"""

from __future__ import annotations

from typing import Any

from conveyor.broker.routes._base import Peer, Reply, invalid
from conveyor.schedules import check_schedule_name, parse_schedule

OPS = ("add", "list", "get", "pause", "resume", "remove", "run_now")


def schedule(peer: Peer, frame: dict[str, Any]) -> Reply:
    op = frame["op"]
    if op not in OPS:
        raise invalid("op", f"must be one of {', '.join(OPS)}")
    rid = frame["rid"]
    if op == "add":
        spec = frame.get("schedule")
        if spec is None:
            raise invalid("schedule", "is required for add")
        parsed = parse_schedule(spec, peer.core.clock.now())
        return _add(peer, rid, parsed, bool(frame.get("replace", False)))
    if op == "list":
        return _list(peer, rid)
    if "name" not in frame:
        raise invalid("name", f"is required for {op}")
    name = check_schedule_name(frame["name"])
    return _named(peer, rid, op, name)


async def _add(peer: Peer, rid: int, parsed: Any, replace: bool) -> None:
    info = await peer.core.schedules.add(parsed, replace=replace)
    peer.send({"t": "ok", "rid": rid, "schedule": info})


async def _list(peer: Peer, rid: int) -> None:
    peer.send({"t": "ok", "rid": rid, "schedules": await peer.core.schedules.list_all()})


async def _named(peer: Peer, rid: int, op: str, name: str) -> None:
    book = peer.core.schedules
    if op == "get":
        peer.send({"t": "ok", "rid": rid, "schedule": await book.get(name)})
    elif op in ("pause", "resume"):
        peer.send({"t": "ok", "rid": rid, "schedule": await book.pause(name, op == "pause")})
    elif op == "remove":
        await book.remove(name)
        peer.send({"t": "ok", "rid": rid, "removed": name})
    else:  # run_now
        inserted = await book.run_now(name)
        job = inserted.job
        peer.send(
            {
                "t": "ok",
                "rid": rid,
                "job": {"id": job.id, "state": job.state.value, "created": inserted.created},
            }
        )

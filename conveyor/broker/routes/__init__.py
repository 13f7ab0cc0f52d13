"""The protocol face of the broker: one route per frame type a client may send.

Each route is ``frame → checked arguments → a core call → the reply frame`` (see
``_base.py``). The HTTP API is a second set of routes over the same core.
"""

from __future__ import annotations

from typing import Any

from conveyor.broker.routes import admin, producer, schedules, workers
from conveyor.broker.routes._base import Peer, Reply, Route
from conveyor.protocol.frames import FrameType


def ping(peer: Peer, frame: dict[str, Any]) -> Reply:
    reply: dict[str, Any] = {"t": "pong"}
    if "rid" in frame:
        reply["rid"] = frame["rid"]
    peer.send(reply)
    return None


def ignore(peer: Peer, frame: dict[str, Any]) -> Reply:
    """PONG, and ERROR from a client (a fatal code has closed the connection already)."""
    return None


def goodbye(peer: Peer, frame: dict[str, Any]) -> Reply:
    peer.close()
    return None


ROUTES: dict[FrameType, Route] = {
    FrameType.SUBMIT: producer.submit,
    FrameType.GET: producer.get,
    FrameType.GET_MANY: producer.get_many,
    FrameType.WAIT: producer.wait,
    FrameType.CANCEL: producer.cancel,
    FrameType.LIST: producer.list_jobs,
    FrameType.STATS: producer.stats,
    FrameType.DLQ_RETRY: producer.dlq_retry,
    FrameType.DLQ_PURGE: producer.dlq_purge,
    FrameType.TOKEN_CREATE: admin.token_create,
    FrameType.TOKEN_LIST: admin.token_list,
    FrameType.TOKEN_REVOKE: admin.token_revoke,
    FrameType.QUEUE_PAUSE: admin.queue_pause,
    FrameType.QUEUE_RESUME: admin.queue_resume,
    FrameType.LIMITS: admin.limits,
    FrameType.SCHEDULE: schedules.schedule,
    FrameType.PING: ping,
    FrameType.PONG: ignore,
    FrameType.GOODBYE: goodbye,
    FrameType.ERROR: ignore,
    FrameType.READY: workers.ready,
    FrameType.REPORT: workers.report,
    FrameType.HEARTBEAT: workers.heartbeat,
    FrameType.PROGRESS: workers.progress,
    FrameType.RELEASE: workers.release,
    FrameType.DRAIN: workers.drain,
}

__all__ = ["ROUTES", "Peer", "Reply", "Route"]

"""What the broker does with each frame type: the table, and the connection-level frames.

Each handler validates its frame (raising BrokerError with a code and field on bad
input; the session turns that into an ERROR reply and the connection stays usable),
then either replies at once or returns a coroutine the session runs as a task. The
handlers themselves live by role: producer.py, workers.py, admin.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.broker import admin, producer, workers
from conveyor.broker._reply import Handler, Reply
from conveyor.protocol.frames import FrameType

if TYPE_CHECKING:
    from conveyor.broker.session import Session


def ping(session: Session, frame: dict[str, Any]) -> Reply:
    reply: dict[str, Any] = {"t": "pong"}
    if "rid" in frame:
        reply["rid"] = frame["rid"]
    session.send(reply)
    return None


def pong(session: Session, frame: dict[str, Any]) -> Reply:
    return None


def goodbye(session: Session, frame: dict[str, Any]) -> Reply:
    session.close()
    return None


def error(session: Session, frame: dict[str, Any]) -> Reply:
    return None  # a client telling us about a problem: logged nowhere, nothing to do


HANDLERS: dict[FrameType, Handler] = {
    FrameType.SUBMIT: producer.submit,
    FrameType.GET: producer.get,
    FrameType.WAIT: producer.wait,
    FrameType.CANCEL: producer.cancel,
    FrameType.LIST: producer.list_jobs,
    FrameType.STATS: producer.stats,
    FrameType.DLQ_RETRY: producer.dlq_retry,
    FrameType.DLQ_PURGE: producer.dlq_purge,
    FrameType.TOKEN_CREATE: admin.token_create,
    FrameType.TOKEN_LIST: admin.token_list,
    FrameType.TOKEN_REVOKE: admin.token_revoke,
    FrameType.PING: ping,
    FrameType.PONG: pong,
    FrameType.GOODBYE: goodbye,
    FrameType.ERROR: error,
    FrameType.READY: workers.ready,
    FrameType.REPORT: workers.report,
    FrameType.HEARTBEAT: workers.heartbeat,
    FrameType.RELEASE: workers.release,
    FrameType.DRAIN: workers.drain,
}

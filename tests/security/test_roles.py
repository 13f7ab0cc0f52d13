"""Which frames each role may send."""

from __future__ import annotations

import pytest

from conveyor.protocol.frames import FrameType as F
from conveyor.security.roles import BROKER_ONLY_FRAMES, ROLE_PERMISSIONS, may_send
from conveyor.security.tokens import Role

COMMON = {F.HELLO, F.PING, F.PONG, F.GOODBYE, F.ERROR}
PRODUCER = COMMON | {F.SUBMIT, F.GET, F.GET_MANY, F.WAIT, F.LIST, F.STATS, F.CANCEL, F.SCHEDULE}
WORKER = COMMON | {F.READY, F.REPORT, F.HEARTBEAT, F.PROGRESS, F.RELEASE, F.DRAIN, F.GET}
ADMIN = (
    PRODUCER
    | WORKER
    | {F.DLQ_RETRY, F.DLQ_PURGE, F.TOKEN_CREATE, F.TOKEN_LIST, F.TOKEN_REVOKE}
    | {F.QUEUE_PAUSE, F.QUEUE_RESUME, F.LIMITS}
)


@pytest.mark.parametrize(
    ("role", "expected"),
    [(Role.PRODUCER, PRODUCER), (Role.WORKER, WORKER), (Role.ADMIN, ADMIN)],
)
def test_each_role_may_send_exactly_its_frames(role: Role, expected: set[F]) -> None:
    # Spelled out in full: a new frame type fails this test until someone decides who may
    # send it.
    assert ROLE_PERMISSIONS[role] == expected
    for ftype in F:
        assert may_send(role, ftype) is (ftype in expected), ftype


@pytest.mark.parametrize(
    ("role", "ftype"),
    [
        (Role.PRODUCER, F.READY),
        (Role.PRODUCER, F.REPORT),
        (Role.PRODUCER, F.HEARTBEAT),
        (Role.PRODUCER, F.DLQ_PURGE),
        (Role.PRODUCER, F.TOKEN_CREATE),
        (Role.WORKER, F.SUBMIT),
        (Role.WORKER, F.CANCEL),
        (Role.WORKER, F.TOKEN_LIST),
        (Role.WORKER, F.DLQ_RETRY),
        (Role.WORKER, F.STATS),
        (Role.WORKER, F.LIST),
        (Role.WORKER, F.WAIT),
        (Role.WORKER, F.SCHEDULE),
    ],
)
def test_escalation_is_refused(role: Role, ftype: F) -> None:
    assert not may_send(role, ftype)


def test_nobody_may_send_broker_frames() -> None:
    assert {F.WELCOME, F.DISPATCH, F.ACKED, F.ABORT, F.JOB, F.OK} <= BROKER_ONLY_FRAMES
    for role in Role:
        for ftype in BROKER_ONLY_FRAMES:
            assert not may_send(role, ftype)


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        ROLE_PERMISSIONS[Role.PRODUCER] = frozenset(F)  # type: ignore[index]

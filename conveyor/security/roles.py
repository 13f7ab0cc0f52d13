"""Which frame types a client of each role may send to the broker.

The broker checks every frame after the handshake with :func:`may_send`; a frame its
role may not send gets an ERROR ``forbidden`` and the connection stays open. Frames only
the broker sends (welcome, dispatch, replies...) are allowed to no role at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from conveyor.protocol.frames import FrameType
from conveyor.security.tokens import Role

F = FrameType

# Connection housekeeping, allowed to everyone.
COMMON_FRAMES: frozenset[FrameType] = frozenset({F.HELLO, F.PING, F.PONG, F.GOODBYE, F.ERROR})

# Frames that only ever travel from the broker to a client.
BROKER_ONLY_FRAMES: frozenset[FrameType] = frozenset(
    {
        F.WELCOME,
        F.SUBMITTED,
        F.JOB,
        F.JOBS,
        F.STATS_REPLY,
        F.OK,
        F.DISPATCH,
        F.ACKED,
        F.ABORT,
    }
)

_PRODUCER = frozenset(
    {
        F.SUBMIT,
        F.GET,
        F.GET_MANY,
        F.WAIT,
        F.LIST,
        F.STATS,
        # Producers may cancel jobs: whoever can submit work can withdraw it. Jobs carry
        # no owner yet, so this is any queued/scheduled job, not only the producer's own.
        F.CANCEL,
        # Schedules are standing submits: whoever may submit may schedule (and pause,
        # remove or run one now), as with CANCEL; workers may not.
        F.SCHEDULE,
    }
)
# Workers run what they are given and report on it. GET is allowed for the jobs the
# connection holds (dispatched to it, not yet reported): the route refuses any other id.
# No STATS, LIST or WAIT: a worker has no need to see the queue's other work, its numbers or
# the other workers (hosts, pids, addresses).
_WORKER = frozenset({F.READY, F.REPORT, F.HEARTBEAT, F.PROGRESS, F.RELEASE, F.DRAIN, F.GET})
SCOPED: Mapping[Role, frozenset[FrameType]] = MappingProxyType({Role.WORKER: frozenset({F.GET})})
"""Frames a role may send only about some jobs: GET by a worker, of a job it holds."""
_ADMIN = frozenset(FrameType) - BROKER_ONLY_FRAMES  # everything a client can send

ROLE_PERMISSIONS: Mapping[Role, frozenset[FrameType]] = MappingProxyType(
    {
        Role.PRODUCER: COMMON_FRAMES | _PRODUCER,
        Role.WORKER: COMMON_FRAMES | _WORKER,
        Role.ADMIN: COMMON_FRAMES | _ADMIN,
    }
)


def may_send(role: Role, ftype: FrameType) -> bool:
    """Whether a client authenticated as ``role`` may send a frame of type ``ftype``."""
    allowed = ROLE_PERMISSIONS.get(role)
    return allowed is not None and ftype in allowed

"""Admin routes: tokens, queue pause and resume, rate and concurrency limits."""

from __future__ import annotations

from typing import Any

from conveyor.broker.routes._base import Peer, Reply, invalid
from conveyor.errors import JobNotFound
from conveyor.limits import MAX_ECHO, MAX_QUEUE_NAME
from conveyor.limitspec import MAX_LIMITS
from conveyor.protocol.frames import ErrorCode
from conveyor.security.tokens import Role, TokenInfo
from conveyor.validation import check_name


def token_map(info: TokenInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "role": info.role.value,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked,
        "hash_prefix": info.hash_prefix,
    }


def queue_pause(peer: Peer, frame: dict[str, Any]) -> Reply:
    return _pause(peer, frame, True)


def queue_resume(peer: Peer, frame: dict[str, Any]) -> Reply:
    return _pause(peer, frame, False)


def _pause(peer: Peer, frame: dict[str, Any], paused: bool) -> Reply:
    queue = check_name(frame["queue"], "queue", MAX_QUEUE_NAME)
    return _paused(peer, frame["rid"], queue, paused)


async def _paused(peer: Peer, rid: int, queue: str, paused: bool) -> None:
    await peer.core.pause(queue, paused)
    peer.send({"t": "ok", "rid": rid, "queue": queue, "paused": paused})


def limits(peer: Peer, frame: dict[str, Any]) -> Reply:
    """LIMITS: clear (``clear``: targets) and set (``set``: target -> value) limits, then
    reply with them all; with neither, only the reply. All are checked before any changes."""
    changes = frame.get("set") or {}
    clears = frame.get("clear") or []
    if len(changes) + len(clears) > MAX_LIMITS:
        raise invalid("set", f"may change at most {MAX_LIMITS} limits at once")
    for target, value in changes.items():
        peer.core.limiter.check(target, value, "set")
    for target in clears:
        peer.core.limiter.check(target, None, "clear")
    return _limits(peer, frame["rid"], changes, clears)


async def _limits(peer: Peer, rid: int, changes: dict[str, Any], clears: list[str]) -> None:
    info = await peer.core.limits(changes, clears)
    peer.send({"t": "ok", "rid": rid, "limits": info})


def token_create(peer: Peer, frame: dict[str, Any]) -> Reply:
    try:
        role = Role(frame["role"])
    except ValueError:
        raise invalid("role", "must be producer, worker or admin") from None
    return _token_create(peer, frame["rid"], role, frame.get("name"), frame.get("ttl"))


async def _token_create(
    peer: Peer, rid: int, role: Role, name: str | None, ttl: float | None
) -> None:
    try:
        token, info = await peer.core.token_create(role, name, ttl)
    except ValueError as exc:  # bad name/ttl, or DuplicateTokenName
        raise invalid("name" if "name" in str(exc) else "ttl", str(exc)) from None
    peer.send({"t": "ok", "rid": rid, "token": token, "info": token_map(info)})


def token_list(peer: Peer, frame: dict[str, Any]) -> Reply:
    tokens = [token_map(t) for t in peer.core.token_list()]
    peer.send({"t": "ok", "rid": frame["rid"], "tokens": tokens})
    return None


def token_revoke(peer: Peer, frame: dict[str, Any]) -> Reply:
    return _token_revoke(peer, frame["rid"], frame["name"])


async def _token_revoke(peer: Peer, rid: int, name: str) -> None:
    if not await peer.core.token_revoke(name):
        raise JobNotFound(ErrorCode.NOT_FOUND, f"no token named {name[:MAX_ECHO]!r}")
    peer.send({"t": "ok", "rid": rid, "revoked": name})

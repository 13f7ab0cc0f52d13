"""Admin requests: token management over the protocol."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from conveyor.broker._reply import Reply, invalid
from conveyor.errors import JobNotFound
from conveyor.protocol.frames import ErrorCode
from conveyor.security.tokens import Role, TokenInfo

if TYPE_CHECKING:
    from conveyor.broker.session import Session


def _token_map(info: TokenInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "role": info.role.value,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked,
        "hash_prefix": info.hash_prefix,
    }


def token_create(session: Session, frame: dict[str, Any]) -> Reply:
    try:
        role = Role(frame["role"])
    except ValueError:
        raise invalid("role", "role must be producer, worker or admin") from None
    return _token_create(session, frame["rid"], role, frame.get("name"), frame.get("ttl"))


async def _token_create(
    session: Session, rid: int, role: Role, name: str | None, ttl: float | None
) -> None:
    broker = session.broker
    try:  # the registry locks and fsyncs its file: keep that off the event loop
        token, info = await asyncio.to_thread(
            broker.tokens.create, role, name, ttl, now=broker.clock.now()
        )
    except ValueError as exc:  # bad name/ttl, or DuplicateTokenName
        raise invalid("name" if "name" in str(exc) else "ttl", str(exc)) from None
    session.send({"t": "ok", "rid": rid, "token": token, "info": _token_map(info)})


def token_list(session: Session, frame: dict[str, Any]) -> Reply:
    tokens = [_token_map(t) for t in session.broker.tokens.list()]
    session.send({"t": "ok", "rid": frame["rid"], "tokens": tokens})
    return None


def token_revoke(session: Session, frame: dict[str, Any]) -> Reply:
    return _token_revoke(session, frame["rid"], frame["name"])


async def _token_revoke(session: Session, rid: int, name: str) -> None:
    if not await asyncio.to_thread(session.broker.tokens.revoke, name):
        raise JobNotFound(ErrorCode.NOT_FOUND, f"no token named {name!r}")
    session.send({"t": "ok", "rid": rid, "revoked": name})

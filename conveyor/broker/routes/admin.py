"""Admin routes: token management over the protocol."""

from __future__ import annotations

from typing import Any

from conveyor.broker.routes._base import Peer, Reply, invalid
from conveyor.errors import JobNotFound
from conveyor.protocol.frames import ErrorCode
from conveyor.security.tokens import Role, TokenInfo


def token_map(info: TokenInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "role": info.role.value,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked,
        "hash_prefix": info.hash_prefix,
    }


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
        raise JobNotFound(ErrorCode.NOT_FOUND, f"no token named {name!r}")
    peer.send({"t": "ok", "rid": rid, "revoked": name})

"""What the client tests share."""

from __future__ import annotations

from typing import Any

from conveyor import Client


def count_requests(c: Any) -> dict[str, int]:
    """Count the frames a client sends, by type (the sync Client's pipelined ones too:
    they are counted where its connection's session numbers them)."""
    counts: dict[str, int] = {}
    if isinstance(c, Client):
        owner, name = c._transport.session, "request"
    else:
        owner, name = c, "_request"
    request = getattr(owner, name)

    def counting(frame: dict[str, Any], **kwargs: Any) -> Any:
        counts[frame["t"]] = counts.get(frame["t"], 0) + 1
        return request(frame, **kwargs)

    setattr(owner, name, counting)
    return counts

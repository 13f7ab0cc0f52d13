"""How many jobs each limit holds back now: the numbers beside each limit in stats, the API
and the dashboard's Limits panel.

Pure functions over what the limiter's snapshot and the store's stats already give (no
state of their own, nothing read from the dispatcher), so the limiter's internals may
change under them:

* a rate limit (``task:NAME``, ``queue:NAME``): ``queued``, the jobs of its target queued
  now. While it is ``limited`` (no token) they wait for it; otherwise for a worker.
* a concurrency limit: ``running`` and ``waiting`` (queued, set aside until a running job
  of their key ends), summed over the keys it governs. ``key:PREFIX`` governs the keys for
  which it is the longest prefix set; a task's own limit (``@task(concurrency_limit=)``)
  governs the keys under no prefix, which can be told apart only when one task declares a
  limit (else its numbers are ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def governing(key: str, prefixes: Sequence[str]) -> str | None:
    """The longest of ``prefixes`` that ``key`` starts with (None: none does)."""
    best: str | None = None
    for prefix in prefixes:
        if key.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def add_counts(info: dict[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` (the limits as :meth:`BrokerCore.limits_info` gives them) with each rate's
    ``queued`` and each concurrency limit's ``running`` and ``waiting``; ``stats`` are the
    store's (``tasks`` and ``queues``: counts by state)."""
    for rate in info["rates"]:
        kind, name = rate["target"].split(":", 1)
        counts = stats.get("tasks" if kind == "task" else "queues", {}).get(name, {})
        rate["queued"] = int(counts.get("queued", 0))
    prefixes = [c["target"][4:] for c in info["concurrency"] if c["target"].startswith("key:")]
    by_task = [c for c in info["concurrency"] if not c["target"].startswith("key:")]
    sums: dict[str | None, list[int]] = {}
    for column, per_key in ((0, info["running_by_key"]), (1, info["waiting_for_key"])):
        for key, n in per_key.items():
            sums.setdefault(governing(key, prefixes), [0, 0])[column] += n
    for limit in info["concurrency"]:
        target: str = limit["target"]
        if target.startswith("key:"):
            running, waiting = sums.get(target[4:], [0, 0])
        elif len(by_task) == 1:
            running, waiting = sums.get(None, [0, 0])
        else:
            limit["running"] = limit["waiting"] = None
            continue
        limit["running"], limit["waiting"] = running, waiting
    return info

"""What a PostgreSQL claim sends: each claimant's offer as array literals, made once per
claimant, and the workers of one claim dealt the jobs in turn (see ``CLAIM`` in
:mod:`conveyor.stores.sql.pg_queries`)."""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.job import DEFAULT_QUEUE, UNROUTED
from conveyor.lifecycle import TaskOptions
from conveyor.stores.base import Claimant
from conveyor.stores.sql.pg_rows import array_literal

CLAIMANTS = 1024  # claimants whose arrays are kept (one a connected worker, a paused queue)
LEASE, SLOT = -3, -1  # a claimed row ends with its new lease, its old seq, its worker


def _says_something(o: TaskOptions | None) -> bool:
    """Options the claim sets from (the rest the lifecycle reads from the claimant)."""
    return o is not None and (
        o.retries is not None or o.retry_backoff is not None or o.retry_backoff_max is not None
    )


def deal(wants: Sequence[tuple[str, int]]) -> list[str]:
    """The workers of one claim in turn, each as often as it wants jobs: the k-th job
    (priority, then FIFO) goes to the k-th slot, so that equal workers share the work."""
    slots: list[str] = []
    for turn in range(max((n for _, n in wants), default=0)):
        slots.extend(worker for worker, n in wants if n > turn)
    return slots


class Claimants:
    """The array literals of the claimants seen lately (by identity: one a connected
    worker, or a paused queue's narrowed copy of one)."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[Claimant, dict[str, str], tuple[str, ...]]] = {}

    def arrays(self, claimant: Claimant) -> tuple[dict[str, str], tuple[str, ...]]:
        """The claimant's queues, tasks and options as array literals, and them as one key
        (claimants with equal keys claim together), made once per claimant (a worker may
        offer thousands of tasks: dumping them on every claim would cost more than the
        claim)."""
        cached = self._kept.get(id(claimant))
        if cached is not None and cached[0] is claimant:
            return cached[1], cached[2]
        # only the tasks with something to say (a task on the default queue without
        # options gets the defaults from the missing row as well): a claim sends a few
        # names, not every task a worker offers
        named = sorted(
            t
            for t in set(claimant.options) | set(claimant.routes)
            if claimant.route(t) != DEFAULT_QUEUE or _says_something(claimant.options.get(t))
        )
        opts = [claimant.options.get(t) for t in named]
        arrays = {
            "queues": array_literal([*claimant.queues, UNROUTED]),
            "tasks": array_literal(sorted(claimant.tasks)),
            "otask": array_literal(named),
            "oretries": array_literal([o.retries if o else None for o in opts]),
            "obackoff": array_literal([o.retry_backoff if o else None for o in opts]),
            "obackoff_max": array_literal([o.retry_backoff_max if o else None for o in opts]),
            "oroute": array_literal([claimant.routes.get(t) for t in named]),
        }
        key = tuple(arrays.values())
        if len(self._kept) >= CLAIMANTS:
            self._kept.pop(next(iter(self._kept)))
        self._kept[id(claimant)] = (claimant, arrays, key)
        return arrays, key

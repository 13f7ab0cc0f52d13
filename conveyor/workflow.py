"""Workflows made of ordinary jobs: signatures, ``chain``, ``group`` and ``chord``.

A *signature* is a job not submitted yet: ``sig("resize", path, width=200)`` or, for a
``@task``, ``resize.s(path, width=200)``; ``.set(queue=..., priority=...)`` adds submit
options. Combine them and submit the whole with ``client.submit_workflow(...)``:

* ``chain(a, b, c)``: one after the other; each step gets the result of the step before
  as its **first positional argument** (like Celery: ``chain(add.s(1, 2), add.s(10))``
  runs ``add(1, 2)`` then ``add(3, 10)``). A step that fails for good (dead, or
  cancelled) ends the chain: the steps after it are cancelled, each with the reason in
  its history.
* ``group([a, b, c])``: all at once; the handle's ``result()`` is the list of their
  results, in order. A step after a group (in a chain) gets that list as its first
  argument.
* ``chord(group, callback)``: the callback runs once every member completed, with the
  list of their results, in order, as its first argument; exactly once, however many
  members finish at the same moment. A member that fails for good cancels the callback.

Nothing here talks to the broker: :func:`plan` turns a workflow into the jobs to submit
(ids chosen here, each with the ids it waits for, ``after``, and what of their results it
receives, ``feed``); the clients submit them as one batch (docs/workflows.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conveyor._ids import new_job_id
from conveyor.job import FEED_RESULT, FEED_RESULTS

__all__ = ["Chain", "Chord", "Group", "Plan", "Signature", "chain", "chord", "group", "plan", "sig"]


@dataclass(frozen=True, slots=True)
class Signature:
    """A job to submit as part of a workflow: task (a name or a ``@task``), its
    arguments, and submit options (queue, priority, retries, timeout, ...)."""

    task: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def set(self, **options: Any) -> Signature:
        """The same signature with these submit options added."""
        if "job_id" in options or "after" in options:
            raise TypeError("a workflow chooses its jobs' ids and dependencies itself")
        return Signature(self.task, self.args, self.kwargs, {**self.options, **options})

    @property
    def name(self) -> str:
        return self.task if isinstance(self.task, str) else str(self.task.name)


@dataclass(frozen=True, slots=True)
class Chain:
    steps: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Group:
    members: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Chord:
    header: Group
    callback: Node


Node = Signature | Chain | Group | Chord


def sig(task: Any, *args: Any, **kwargs: Any) -> Signature:
    """A signature of ``task`` called with these arguments (all of them go to the task;
    use :meth:`Signature.set` for submit options)."""
    return Signature(task, args, kwargs)


def chain(*steps: Node) -> Chain:
    """Run ``steps`` one after the other, each getting the previous result first."""
    if not steps:
        raise ValueError("a chain needs at least one step")
    flat: list[Node] = []
    for step in steps:
        flat.extend(step.steps if isinstance(step, Chain) else (_node(step),))
    return Chain(tuple(flat))


def group(*members: Node | Iterable[Node]) -> Group:
    """Run ``members`` in parallel: ``group(a, b)`` or ``group([a, b])``."""
    if len(members) == 1 and not isinstance(members[0], Signature | Chain | Group | Chord):
        members = tuple(members[0])
    if not members:
        raise ValueError("a group needs at least one member")
    return Group(tuple(_node(m) for m in members))


def chord(header: Group | Iterable[Node], callback: Node) -> Chord:
    """Run the group, then ``callback`` once with the list of its results."""
    return Chord(header if isinstance(header, Group) else group(header), _node(callback))


def _node(value: Any) -> Node:
    if not isinstance(value, Signature | Chain | Group | Chord):
        raise TypeError(f"a workflow is made of signatures (sig(...), task.s(...)), not {value!r}")
    return value


# -- planning: the jobs to submit ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Planned:
    """One job of a planned workflow."""

    id: str
    step: Signature
    after: tuple[str, ...] = ()
    feed: str | None = None  # FEED_RESULT or FEED_RESULTS (with after)


@dataclass(frozen=True, slots=True)
class Plan:
    """A workflow's jobs, in an order where each comes after those it waits for;
    ``tails`` are the jobs whose results are the workflow's result (a list of them when
    ``many``: it ends in a group)."""

    id: str
    jobs: tuple[Planned, ...]
    tails: tuple[str, ...]
    many: bool


def plan(node: Node, workflow_id: str | None = None) -> Plan:
    """The jobs of ``node``, each with the ids it waits for and what it receives."""
    out: list[Planned] = []
    tails, feed = _plan(_node(node), (), None, out)
    return Plan(workflow_id or new_job_id(), tuple(out), tails, feed == FEED_RESULTS)


def _plan(
    node: Node, after: tuple[str, ...], feed: str | None, out: list[Planned]
) -> tuple[tuple[str, ...], str]:
    """Plan ``node`` to run after ``after`` (receiving ``feed`` of them); returns the jobs
    that end it and what a step after it would receive of them."""
    if isinstance(node, Signature):
        job_id = new_job_id()
        out.append(Planned(job_id, node, after, feed if after else None))
        return (job_id,), FEED_RESULT
    if isinstance(node, Chain):
        ends, receives = after, feed or FEED_RESULT
        for step in node.steps:
            ends, receives = _plan(step, ends, receives if ends else None, out)
        return ends, receives
    if isinstance(node, Group):
        tails: list[str] = []
        for member in node.members:
            ends, _ = _plan(member, after, feed, out)
            tails.extend(ends)
        return tuple(tails), FEED_RESULTS
    header, _ = _plan(node.header, after, feed, out)
    return _plan(node.callback, header, FEED_RESULTS, out)


# -- seen from its jobs: what kind of workflow it was ------------------------------------------
def kind_of(members: int, roots: int, joins: int) -> str:
    """The top shape of a workflow from its jobs, as the broker sees them (it keeps no
    record of the workflow itself): ``members``, how many wait for none (``roots``), how
    many receive a list of results (``joins``). ``group`` (every job starts at once, or
    parallel chains), ``chain`` (one job starts it), ``chord`` (parallel jobs, then one
    callback: also a chain that starts with a group), else ``workflow``."""
    if roots == members:
        return "group" if members > 1 else "chain"
    if joins == 1 and roots == members - 1:
        return "chord"  # of signatures (its header may have one member)
    if roots == 1:
        return "chain"
    if joins == 0:
        return "group"
    return "chord" if joins == 1 else "workflow"

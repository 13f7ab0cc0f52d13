"""The store contract, continued: listing workflows (``Store.workflow_list``), on every engine.

The ``store`` fixture and the helpers are those of :mod:`tests.stores.test_contract`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conveyor import lifecycle
from conveyor.job import JobRecord
from conveyor.stores.base import Store, WorkflowSummary
from conveyor.stores.sql.sqlite_jobs import list_workflows
from conveyor.stores.sql.sqlite_schema import migrate
from tests.stores import test_contract
from tests.stores.test_contract import T0, change, claim, insert, report, spec

store = test_contract.store  # the fixture: every engine


async def _workflows(store: Store) -> tuple[list[JobRecord], list[JobRecord], list[JobRecord]]:
    """A chain of three (wf-1), a group of two (wf-2), a chord of two and a callback
    (wf-3), each submitted a second after the one before, and a job of no workflow."""
    a, b, c = "c-a", "c-b", "c-c"
    chain = await insert(
        store,
        spec(id=a, workflow="wf-1"),
        spec(id=b, workflow="wf-1", depends_on=(a,), feed="result"),
        spec(id=c, workflow="wf-1", depends_on=(b,), feed="result"),
        now=T0,
    )
    group = await insert(
        store, spec(id="g-a", workflow="wf-2"), spec(id="g-b", workflow="wf-2"), now=T0 + 1
    )
    chord = await insert(
        store,
        spec(id="h-a", workflow="wf-3"),
        spec(id="h-b", workflow="wf-3"),
        spec(id="h-cb", workflow="wf-3", depends_on=("h-a", "h-b"), feed="results"),
        now=T0 + 2,
    )
    await insert(store, spec(id="lonely"), now=T0 + 3)
    return chain, group, chord


async def test_no_workflows_is_an_empty_page(store: Store) -> None:
    await insert(store, spec())
    page = await store.workflow_list()
    assert (page.workflows, page.cursor) == ([], None)


async def test_workflows_are_listed_newest_first_with_their_shape(store: Store) -> None:
    await _workflows(store)
    page = await store.workflow_list()
    assert page.cursor is None
    assert page.workflows == [
        WorkflowSummary("wf-3", {"queued": 2, "waiting": 1}, 3, 2, 1, T0 + 2),
        WorkflowSummary("wf-2", {"queued": 2}, 2, 2, 0, T0 + 1),
        WorkflowSummary("wf-1", {"queued": 1, "waiting": 2}, 3, 1, 0, T0),
    ]


async def test_workflow_pages_follow_the_cursor(store: Store) -> None:
    await _workflows(store)
    first = await store.workflow_list(limit=2)
    assert [w.id for w in first.workflows] == ["wf-3", "wf-2"]
    assert first.cursor is not None
    second = await store.workflow_list(limit=2, cursor=first.cursor)
    assert [w.id for w in second.workflows] == ["wf-1"]
    assert second.cursor is None
    exact = await store.workflow_list(limit=3)  # a full last page says there is no more
    assert len(exact.workflows) == 3 and exact.cursor is None


async def test_a_workflows_counts_follow_its_jobs(store: Store) -> None:
    (head, _, _), _, _ = await _workflows(store)
    (running,) = await claim(store, limit=1)
    assert running.id == head.id
    assert (await store.workflow_list(limit=3)).workflows[-1].counts == {
        "running": 1,
        "waiting": 2,
    }
    await report(store, running, T0 + 10)
    released = await change(store, "c-b", lambda r: lifecycle.ready(r, T0 + 10, None))
    assert released is not None
    wf1 = (await store.workflow_list(limit=3)).workflows[-1]
    assert wf1.counts == {"completed": 1, "queued": 1, "waiting": 1}


async def test_a_workflow_whose_jobs_are_gone_is_not_listed(store: Store) -> None:
    _, group, _ = await _workflows(store)
    for job in group:
        await change(store, job.id, lambda r: lifecycle.cancel(r, T0 + 5))
    assert await store.job_prune(T0 + 6) == 2
    assert [w.id for w in (await store.workflow_list()).workflows] == ["wf-3", "wf-1"]


def test_sqlite_lists_workflows_off_their_index(tmp_path: Path) -> None:
    """The listing reads the ``jobs_workflow`` index (``INDEXED BY``: SQLite refuses the
    query rather than scan the table), and the plan says so."""
    conn = sqlite3.connect(tmp_path / "plan.db")
    migrate(conn)
    assert list_workflows(conn, 10, None) == ([], [], False)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT DISTINCT workflow FROM jobs INDEXED BY jobs_workflow"
        " WHERE workflow IS NOT NULL AND workflow < ? ORDER BY workflow DESC LIMIT 5",
        ("x",),
    ).fetchall()
    assert any("jobs_workflow" in row[-1] for row in plan), plan
    assert not any(row[-1].strip() == "SCAN jobs" for row in plan), plan

"""conveyor.workflow.kind_of: a workflow's kind read back from the jobs its plan makes."""

from __future__ import annotations

import pytest

from conveyor.job import FEED_RESULTS
from conveyor.workflow import Node, chain, chord, group, kind_of, plan, sig


def _kind(node: Node) -> str:
    jobs = plan(node).jobs
    roots = sum(1 for j in jobs if not j.after)
    joins = sum(1 for j in jobs if j.feed == FEED_RESULTS)
    return kind_of(len(jobs), roots, joins)


@pytest.mark.parametrize(
    ("node", "kind"),
    [
        (sig("a"), "chain"),
        (chain(sig("a"), sig("b"), sig("c")), "chain"),
        (chain(sig("a"), group(sig("b"), sig("c"))), "chain"),
        (group(sig("a"), sig("b")), "group"),
        (group(chain(sig("a"), sig("b")), chain(sig("c"), sig("d"))), "group"),
        (chord(group(sig("a"), sig("b")), sig("cb")), "chord"),
        (chord(group(sig("a")), sig("cb")), "chord"),
        (chord(group(chain(sig("a"), sig("b")), sig("c")), sig("cb")), "chord"),
        (group(chord([sig("a"), sig("b")], sig("x")), chord([sig("c"), sig("d")], sig("y"))),
         "workflow"),
    ],
)  # fmt: skip
def test_the_kind_follows_the_top_shape(node: Node, kind: str) -> None:
    assert _kind(node) == kind

"""Job ids: UUIDv7 text, sorted by when they were made."""

from __future__ import annotations

import uuid

from conveyor._ids import new_job_id


def test_ids_are_canonical_uuid7_text() -> None:
    for _ in range(1000):
        text = new_job_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case hex, dashes where the RFC puts them
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_made_later_sort_after_and_never_repeat() -> None:
    ids = [new_job_id() for _ in range(20_000)]  # several per millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)

"""The broker process collects cycles less often than Python's default, start-up frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from conveyor.cli.broker_cmd import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_gc_raises_the_thresholds_and_freezes_what_exists(restored_gc: None) -> None:
    assert gc.get_threshold() != GC_THRESHOLDS
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0  # the modules and objects of start-up

"""The flow tests' tasks, importable by name (process pool children inherit sys.path)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.worker.tasks import TaskRegistry, load_tasks

HERE = str(Path(__file__).parent)
MODULES = ["flow_tasks"]


@pytest.fixture(scope="session")
def flow_registry() -> Iterator[TaskRegistry]:
    sys.path.insert(0, HERE)
    try:
        yield load_tasks(MODULES)
    finally:
        sys.path.remove(HERE)

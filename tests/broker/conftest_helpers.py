"""Test tasks that let a test hold a worker busy and see the order jobs ran in."""

from __future__ import annotations

import threading

from conveyor import task
from conveyor.worker.tasks import TaskRegistry


class Gate:
    """Jobs of the ``gated`` task record their label, then block until the gate opens."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self._opened = threading.Event()
        self._started = threading.Condition()

    def wait_started(self, label: str, timeout: float = 10.0) -> None:
        with self._started:
            if not self._started.wait_for(lambda: label in self.order, timeout):
                raise TimeoutError(f"job {label} did not start")

    def open(self) -> None:
        self._opened.set()

    def run(self, label: str) -> str:
        with self._started:
            self.order.append(label)
            self._started.notify_all()
        self._opened.wait(30)
        return label


def gated_registry(gate: Gate) -> TaskRegistry:
    registry = TaskRegistry()

    @task(name="gated", registry=registry)
    def gated(label: str) -> str:
        return gate.run(label)

    return registry

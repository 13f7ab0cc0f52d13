"""The flow tests' tasks live in flow_tasks.py, imported by name ("flow_tasks") as a
worker would; the ``flow_registry`` fixture (tests/conftest.py, shared with the client
tests) puts this folder on sys.path while it is used."""

from __future__ import annotations

from pathlib import Path

HERE = str(Path(__file__).parent)
MODULES = ["flow_tasks"]

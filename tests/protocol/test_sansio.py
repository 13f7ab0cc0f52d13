"""The protocol package stays sans-IO: importing it pulls in no networking or event loop."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("asyncio", "socket", "ssl", "selectors")
MODULES = (
    "conveyor.protocol",
    "conveyor.protocol.frames",
    "conveyor.protocol.codec",
    "conveyor.protocol.connection",
)

# conveyor/__init__.py re-exports the public API (clients included, which use asyncio),
# so the probe stands in an empty ``conveyor`` package: what is measured is what the
# protocol modules themselves pull in (conveyor.errors and the like may come along).
_PROBE = """
import importlib.util, json, sys, types
spec = importlib.util.find_spec("conveyor")
pkg = types.ModuleType("conveyor")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["conveyor"] = pkg
for name in {modules!r}:
    __import__(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
"""


def test_protocol_imports_no_io_modules() -> None:
    code = _PROBE.format(modules=MODULES, forbidden=FORBIDDEN)
    # -I: isolated mode, so no site hooks or PYTHON* variables import anything for us
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_the_probe_would_notice() -> None:
    """Guard against a probe that can never fail."""
    code = _PROBE.format(modules=(*MODULES, "asyncio"), forbidden=FORBIDDEN)
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert "asyncio" in json.loads(out.stdout)

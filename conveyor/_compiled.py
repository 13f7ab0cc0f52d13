"""Which of the hot modules run compiled (mypyc), and which ones may be.

``make compiled`` (``scripts/build_compiled.py``) builds :data:`MODULES` into extension
modules next to their ``.py`` files, so Python imports those first; ``make
clean-compiled`` removes them. Every module here stays plain Python that mypyc accepts:
without a build (the default install, ``make test``) the ``.py`` files run as they are.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

MODULES = (
    "conveyor.job",
    "conveyor.lifecycle",
    "conveyor.stores._index",
    "conveyor.stores._live",
    "conveyor.protocol.codec",
    "conveyor.protocol.frames",
)
"""The modules ``make compiled`` builds: the broker's pure logic where its time goes
(docs/benchmarks.md, "Compiled with mypyc"), not the ones that mostly call asyncio or ssl."""


def compiled_modules() -> list[str]:
    """The modules of :data:`MODULES` that this interpreter imports from an extension."""
    found = []
    for name in MODULES:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def describe() -> str:
    """``compiled: 6 of 6 modules (mypyc)`` or ``compiled: none (pure Python)``."""
    found = compiled_modules()
    if not found:
        return "compiled: none (pure Python)"
    return f"compiled: {len(found)} of {len(MODULES)} modules (mypyc)"

"""The public surface is exactly what conveyor/__init__.py lists in __all__."""

from __future__ import annotations

import importlib.metadata

import conveyor


def test_all_lists_every_public_name_and_nothing_else() -> None:
    public = {name for name in dir(conveyor) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(conveyor, name)).__name__ == "module"}
    assert set(conveyor.__all__) - {"__version__"} == public - modules


def test_the_version_is_the_installed_distributions() -> None:
    assert "__version__" in conveyor.__all__
    assert conveyor.__version__ == importlib.metadata.version("conveyor")


def test_the_documented_entry_points_are_exported() -> None:
    for name in ("Client", "AsyncClient", "task", "Retry", "Reject", "JobFailed", "JobState"):
        assert name in conveyor.__all__

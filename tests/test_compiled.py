"""`make compiled`: the hot modules built with mypyc still make a working system.

The build goes into a copy of the package in a temporary directory, never into the source
tree the other tests import; the system runs there in subprocesses (broker, worker and the
bench's client). To stay near 30 s it builds two of the modules, at -O0: the two whose code
had to change for mypyc (a record copied slot by slot, the ready index's heads).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conveyor._compiled import MODULES, compiled_modules, describe

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_compiled.py"
BUILT = ("conveyor.job", "conveyor.stores._index")


def _missing() -> str | None:
    """Why a mypyc build cannot run here (None: it can)."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler (gcc) on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python.h (install the Python development headers)"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (it comes with mypy: pip install mypy)"
    return None


def test_every_listed_module_is_a_python_file_the_build_reads_too() -> None:
    for name in MODULES:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name
    spec = importlib.util.spec_from_file_location("build_compiled", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.modules(ROOT) == list(MODULES)  # one list, read by both
    assert describe().startswith("compiled: ")
    assert set(compiled_modules()) <= set(MODULES)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_compiled_build_runs_a_real_round_trip(tmp_path: Path) -> None:
    reason = _missing()
    if reason is not None:
        pytest.skip(f"cannot build with mypyc: {reason}")
    shutil.copytree(
        ROOT / "conveyor",
        tmp_path / "conveyor",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # mypy's options for the build
    build = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--opt", "0", "--only", *BUILT],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "conveyor", "bench", "--json", str(out)),
            *("--scenario", "throughput", "--jobs", "300", "--samples", "20", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "compiled: 2 of" in run.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["compiled"] == list(BUILT)
    assert report["end_to_end_jobs_per_s"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]

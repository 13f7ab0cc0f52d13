"""`conveyor bench` runs end to end and reports every figure (no timing asserts here:
performance is measured and written up in docs/benchmarks.md, not asserted in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres import base_url

pytestmark = pytest.mark.slow


def _bench(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "bench", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(out.read_text())
    return report


def test_bench_reports_throughput_and_latency(tmp_path: Path) -> None:
    report = _bench(
        tmp_path, "--scenario", "throughput", "--jobs", "400", "--samples", "20", "--workers", "1"
    )
    for key in ("enqueue_jobs_per_s", "drain_jobs_per_s", "end_to_end_jobs_per_s"):
        assert isinstance(report[key], float) and report[key] > 0
    latency = report["latency_ms"]
    assert isinstance(latency, dict)
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert report["machine"]["cpus"]  # type: ignore[index]


def test_bench_on_the_durable_store(tmp_path: Path) -> None:
    report = _bench(
        tmp_path,
        *("--scenario", "throughput", "--jobs", "300", "--samples", "10"),
        *("--store", "sqlite:///{home}/b.db"),
    )
    assert str(report["store"]).startswith("sqlite:///")
    assert isinstance(report["end_to_end_jobs_per_s"], float)


def test_bench_measures_the_paths_users_take(tmp_path: Path) -> None:
    """single, batch, drain, e2e, latency and results, with the sync Client."""
    report = _bench(tmp_path, "--scenario", "e2e", "--jobs", "300", "--workers", "1")
    for key in (
        "single_submits_per_s",
        "single_pipelined_per_s",
        "e2e_pipelined_jobs_per_s",
        "submit_many_per_s",
        "drain_jobs_per_s",
    ):
        assert isinstance(report[key], float) and report[key] > 0
    single, batch = report["e2e_single_jobs_per_s"], report["e2e_batch_jobs_per_s"]
    assert 0 < single < report["single_submits_per_s"]  # type: ignore[operator]
    assert 0 < batch < report["submit_many_per_s"]  # type: ignore[operator]
    assert report["submit_many_client_us"] > 0  # type: ignore[operator]
    assert report["submit_many_broker_us"] >= 0  # type: ignore[operator]  # 10 ms ticks
    assert report["concurrency"] == "default"
    report = _bench(tmp_path, "--scenario", "results", "--jobs", "200", "--workers", "1")
    assert report["results_s"] > 0  # type: ignore[operator]
    assert report["wait_many_s"] > 0  # type: ignore[operator]


def test_bench_spreads_work_over_many_tasks_and_queues(tmp_path: Path) -> None:
    report = _bench(tmp_path, "--scenario", "spread", "--jobs", "300", "--workers", "1")
    for key in (
        "drain_one_task_jobs_per_s",
        "drain_1000_tasks_jobs_per_s",
        "drain_200_queues_jobs_per_s",
    ):
        assert isinstance(report[key], float) and report[key] > 0


def test_bench_budget_names_a_cost_for_every_stage(tmp_path: Path) -> None:
    from conveyor.bench.budget import STAGES

    report = _bench(tmp_path, "--scenario", "budget", "--jobs", "1000", "--workers", "1")
    for key, _ in STAGES:
        assert isinstance(report[key], float) and report[key] > 0, key
    # a batch frame costs less per job than a frame of its own
    assert report["budget_codec_batch_us"] < report["budget_codec_frame_us"]  # type: ignore[operator]


def test_bench_scaling_reports_every_point_and_saves_the_plot(tmp_path: Path) -> None:
    plot = tmp_path / "docs" / "scaling.png"
    report = _bench(
        tmp_path,
        *("--scaling", "--jobs", "20", "--scale", "1,2", "--pool", "thread"),
        *("--plot", str(plot)),
    )
    points = report["scaling"]
    assert isinstance(points, list)
    assert {(p["kind"], p["pool"], p["workers"]) for p in points} == {
        (kind, "thread", n) for kind in ("cpu", "io") for n in (1, 2)
    }
    assert all(p["jobs_per_s"] > 0 for p in points)
    assert {p["speedup"] for p in points if p["workers"] == 1} == {1.0}
    assert report["jobs"] == 20 and report["concurrency"] == 1
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_scaling_plot_is_skipped_with_a_message_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.bench.plot import save_plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    points = [{"kind": "cpu", "pool": "thread", "workers": 1, "jobs_per_s": 1.0, "speedup": 1.0}]
    message = save_plot(points, tmp_path / "s.png", 2)
    assert "matplotlib is not installed" in message and "conveyor[plot]" in message
    assert not (tmp_path / "s.png").exists()


def test_bench_scaling_refuses_a_bad_scale() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "bench", "--scaling", "--scale", "4,2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "ascending worker counts" in proc.stderr


def test_bench_refuses_several_brokers_without_a_shared_store() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "bench", "--scenario", "throughput", "--brokers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "--store postgresql://" in proc.stderr


@pytest.mark.postgres
def test_bench_two_brokers_on_one_database(tmp_path: Path) -> None:
    report = _bench(
        tmp_path,
        *("--scenario", "throughput", "--jobs", "300", "--samples", "10", "--brokers", "2"),
        *("--store", base_url()),
    )
    assert report["brokers"] == 2 and str(report["store"]).startswith("postgresql://")
    assert isinstance(report["end_to_end_jobs_per_s"], float)

"""``GET /metrics``: the broker's numbers in the Prometheus exposition format.

A registry of the broker's own (not the process-wide default, so several brokers in one
process stay apart). Counts are read from the store's indexes when Prometheus scrapes;
run and wait times are observed as jobs finish.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from conveyor.broker.core import BrokerCore
from conveyor.broker.events import BrokerEvent, JobChanged
from conveyor.job import JobState

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600)


class _Snapshot(Collector):
    """Gauges and counters taken from the core at scrape time (kept by the last stats)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        data = self._metrics.last
        by_task = GaugeMetricFamily(
            "conveyor_jobs", "Jobs in the store by state and task", labels=["state", "task"]
        )
        for task, counts in data.get("tasks", {}).items():
            for state in JobState:
                by_task.add_metric([state.value, task], counts.get(state.value, 0))
        yield by_task
        depth = GaugeMetricFamily("conveyor_queue_depth", "Queued jobs per queue", labels=["queue"])
        for queue, counts in data.get("queues", {}).items():
            depth.add_metric([queue or "(unrouted)"], counts.get("queued", 0))
        yield depth
        totals = CounterMetricFamily(
            "conveyor_job_events", "Job events since the store was created", labels=["event"]
        )
        for name, value in data.get("totals", {}).items():
            totals.add_metric([name], value)
        yield totals
        core = self._metrics.core
        yield GaugeMetricFamily(
            "conveyor_store_writable",
            "1 while the store can write, 0 while it cannot (disk full, I/O error)",
            value=1 if core.store.health["writable"] else 0,
        )
        workers = GaugeMetricFamily("conveyor_workers", "Connected workers", labels=["status"])
        all_workers = list(core.dispatcher.workers.values())
        busy = sum(1 for w in all_workers if w.started)
        workers.add_metric(["busy"], busy)
        workers.add_metric(["idle"], len(all_workers) - busy)
        yield workers
        gauges = core.gauges
        yield GaugeMetricFamily(
            "conveyor_connections",
            "Open client connections",
            value=gauges["connections"]() if "connections" in gauges else 0,
        )
        refused = CounterMetricFamily(
            "conveyor_refused_connections", "Connections refused, by why", labels=["reason"]
        )
        for reason in ("rejected_plaintext", "tls_failures", "auth_failures", "refused_limit"):
            refused.add_metric([reason], core.metrics.get(reason, 0))
        refused.add_metric(["auth_throttled"], core.metrics.get("auth_throttled", 0))
        yield refused
        yield from _security(core)
        yield from _limits(core.limits_info(data))


def _limits(info: dict[str, Any]) -> Iterator[Any]:
    """Rate and concurrency limits (the ``limits`` section of stats)."""
    rate = GaugeMetricFamily(
        "conveyor_rate_limit", "Jobs a second a limited task or queue may get", labels=["target"]
    )
    limited = GaugeMetricFamily(
        "conveyor_rate_limited",
        "1 while a rate limit holds jobs back (no token)",
        labels=["target"],
    )
    passed = CounterMetricFamily(
        "conveyor_rate_limit_dispatched", "Jobs a rate limit let through", labels=["target"]
    )
    held = GaugeMetricFamily(
        "conveyor_rate_limit_held_jobs",
        "Queued jobs a rate limit holds back now",
        labels=["target"],
    )
    for r in info["rates"]:
        rate.add_metric([r["target"]], r["per_second"])
        limited.add_metric([r["target"]], 1 if r["limited"] else 0)
        passed.add_metric([r["target"]], r["dispatched"])
        held.add_metric([r["target"]], r["held_jobs"])
    yield rate
    yield limited
    yield passed
    yield held
    running = GaugeMetricFamily(
        "conveyor_key_running", "Running jobs per concurrency key", labels=["key"]
    )
    for key, n in info["running_by_key"].items():
        running.add_metric([key], n)
    yield running
    waiting = GaugeMetricFamily(
        "conveyor_key_waiting",
        "Queued jobs set aside because their concurrency key is at its limit",
        labels=["key"],
    )
    for key, n in info["waiting_for_key"].items():
        waiting.add_metric([key], n)
    yield waiting


def _security(core: BrokerCore) -> Iterator[Any]:
    """Failed logins and their throttle (the ``security`` section of stats)."""
    m = core.metrics
    failures = CounterMetricFamily(
        "conveyor_auth_failures", "Logins with a bad token, by channel", labels=["channel"]
    )
    throttled = CounterMetricFamily(
        "conveyor_auth_throttled",
        "Logins refused unchecked (too_many_failures / HTTP 429) while their source was blocked",
        labels=["channel"],
    )
    for channel, prefix in (("socket", ""), ("http", "http_")):
        failures.add_metric([channel], m.get(prefix + "auth_failures", 0))
        throttled.add_metric([channel], m.get(prefix + "auth_throttled", 0))
    yield failures
    yield throttled
    snap = core.logins.snapshot()
    yield GaugeMetricFamily(
        "conveyor_auth_sources_blocked",
        "Source addresses (IPv4, IPv6 /64) whose logins are refused now",
        value=snap["sources_blocked"],
    )
    yield GaugeMetricFamily(
        "conveyor_auth_sources_tracked",
        "Source addresses with recent bad tokens (bounded table)",
        value=snap["sources_tracked"],
    )
    yield CounterMetricFamily(
        "conveyor_token_ended_connections",
        "Open connections closed because their token was revoked, removed or expired",
        value=m.get("token_ended_connections", 0),
    )


class Metrics:
    """The broker's Prometheus registry and its live histograms."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core
        self.registry = CollectorRegistry(auto_describe=True)
        self.last: dict[str, Any] = {}
        self.run_time = Histogram(
            "conveyor_job_run_seconds",
            "Run time of completed jobs",
            ["task"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.wait_time = Histogram(
            "conveyor_job_wait_seconds",
            "Time from submit to start",
            ["task"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Snapshot(self))
        core.hub.subscribe(self._on_event)

    def _on_event(self, event: BrokerEvent) -> None:
        if not isinstance(event, JobChanged):
            return
        job = event.job
        if job.state is JobState.COMPLETED and job.started_at is not None:
            run = max(0.0, (job.finished_at or event.at) - job.started_at)
            self.run_time.labels(job.task).observe(run)
        elif job.state is JobState.RUNNING and job.started_at is not None:
            self.wait_time.labels(job.task).observe(max(0.0, job.started_at - job.created_at))

    async def exposition(self) -> bytes:
        self.last = await self.core.store.stats()
        return generate_latest(self.registry)

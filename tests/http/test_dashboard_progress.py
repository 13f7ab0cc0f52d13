"""The dashboard's job detail shows a running job's progress and metadata, live (real
Chromium, real broker and worker)."""

from __future__ import annotations

import threading
from typing import Any

from playwright.sync_api import expect

from conveyor import current_job
from conveyor.worker.tasks import load_tasks, task
from tests.http.conftest import LiveSystem
from tests.http.test_dashboard import job_row


def test_the_detail_shows_progress_live_and_keeps_the_last(page: Any, system: LiveSystem) -> None:
    registry = load_tasks(["conveyor.examples"])
    gate = threading.Event()

    @task(registry=registry, name="halfway")
    def halfway() -> str:
        job = current_job()
        job.set_meta(stage="<b>resize</b>")
        job.progress(0.5, "resized 1/2")
        gate.wait(30)
        job.progress(1.0, "done")
        return "through"

    system.start_worker(registry)
    job = system.submit(task="halfway")
    row = job_row(page, job)
    expect(row).to_have_attribute("data-state", "running")
    row.locator("button").click()
    detail = page.locator("#detail")
    expect(detail.locator("[data-field=progress]")).to_have_text("50% resized 1/2")
    expect(detail.locator("[data-field=meta]")).to_contain_text('"stage": "<b>resize</b>"')
    expect(detail.locator("[data-field=progress-bar]")).to_have_attribute("value", "0.5")
    gate.set()
    expect(detail).to_have_attribute("data-state", "completed")
    expect(detail.locator("[data-field=progress]")).to_have_text("100% done")


def test_the_detail_shows_the_workflow_a_job_belongs_to(page: Any, system: LiveSystem) -> None:
    from conveyor import Client, chain, sig

    system.start_worker()
    with Client(system.broker.url, home=system.home) as client:
        flow = client.submit_workflow(chain(sig("add", 1, 2), sig("add", 10)))
        assert flow.result(timeout=20) == 13
    row = job_row(page, flow.ids[1])
    expect(row).to_have_attribute("data-state", "completed")
    row.locator("button").click()
    detail = page.locator("#detail")
    box = detail.locator("[data-field=workflow]")
    expect(box.locator("[data-field=workflow-state]")).to_have_text("completed: 2 job(s)")
    expect(box.locator("li")).to_have_count(2)
    expect(detail.locator("[data-field=payload]")).to_contain_text("3")  # the result passed on
    box.locator(f'li[data-job-id="{flow.ids[0]}"] button').click()  # to the first step
    expect(page.locator("#detail-title")).to_have_text(f"Job {flow.ids[0]}")

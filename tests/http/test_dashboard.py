"""The dashboard in real headless Chromium, over a real broker and real workers.

Every wait is on the page (Playwright's ``expect`` and ``wait_for``) or on the broker's own
events, never a sleep: the page learns of changes from its live feed, one tick a second.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from conveyor.security.tokens import Role, TokenRegistry
from conveyor.validation import parse_job
from conveyor.worker.tasks import TaskRegistry, load_tasks, task
from tests.http.conftest import LiveSystem, new_page

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def next_ticks(page: Any, n: int = 1) -> None:
    """Until the page has had ``n`` more live ticks."""
    seen = int(page.evaluate("Number(document.body.dataset.ticks || 0)"))
    page.wait_for_function("(n) => Number(document.body.dataset.ticks || 0) >= n", arg=seen + n)


def job_row(page: Any, job_id: str) -> Any:
    return page.locator(f'#job-table tbody tr[data-job-id="{job_id}"]')


def fill_store(system: LiveSystem, specs: Iterable[dict[str, Any]]) -> None:
    """Jobs straight into the broker's core, in batches (as a big submit would)."""
    core = system.broker.core

    async def fill() -> None:
        now = core.clock.now()
        batch: list[Any] = []
        for spec in specs:
            batch.append(parse_job(spec, now, core.config.limits.max_payload))
            if len(batch) == 5000:
                await core.submit(batch)
                batch = []
        if batch:
            await core.submit(batch)

    system.run(fill(), timeout=120)


def gated_tasks() -> tuple[TaskRegistry, threading.Event]:
    """The example tasks plus ``gate``, which runs until the test opens the gate."""
    registry = load_tasks(["conveyor.examples"])
    gate = threading.Event()

    @task(registry=registry, name="gate")
    def gated() -> str:
        gate.wait(30)
        return "through"

    return registry, gate


# -- opening it ---------------------------------------------------------------------------------
def test_the_page_loads_with_the_tls_badge_and_goes_live(page: Any, system: LiveSystem) -> None:
    expect(page.locator("#tls-badge")).to_have_text("TLS: ON")
    expect(page.locator("#tls-badge")).to_have_attribute("data-tls", "on")
    expect(page.locator("#conn")).to_have_text("live")
    security = page.locator("#security")
    expect(security).to_contain_text("CN=Conveyor broker")
    expect(security).to_contain_text("TLSv1.3")
    expect(security).to_contain_text("Mutual TLS")
    expect(page.locator("#overview .card")).to_have_count(10)
    expect(page.locator("#chart-throughput canvas")).to_have_count(1)
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0


def test_a_wrong_token_gets_a_clear_message_and_a_good_one_is_kept_for_the_tab(
    browser: Any, system: LiveSystem
) -> None:
    page = new_page(browser, system, login=False)
    try:
        page.goto(system.url)
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token-input", "cvy_not-a-real-token")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_contain_text("refused this token")
        expect(page.locator("#main")).to_be_hidden()
        assert page.evaluate("sessionStorage.length") == 0
        page.fill("#token-input", system.token)
        page.click("#login-form button")
        expect(page.locator("#conn")).to_have_text("live")
        page.reload()  # asked once: the tab keeps it, with no cookie
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#login")).to_be_hidden()
        assert page.context.cookies() == []
        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        assert not page.errors, page.errors
    finally:
        page.close()


def test_a_producer_token_reads_and_submits_and_is_told_what_needs_admin(
    browser: Any, system: LiveSystem
) -> None:
    producer, _ = TokenRegistry(system.home / "tokens.json").create(Role.PRODUCER, now=time.time())
    system.start_worker()
    page = new_page(browser, system, token=producer)
    try:
        page.goto(system.url)
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#dlq-error")).to_have_text(
            "The dead-letter queue needs an admin token."
        )
        page.locator('#queues li[data-queue="default"] button').click()
        expect(page.locator("#queues-error")).to_contain_text("Not allowed with this token")
        assert system.api("GET", "/api/stats")["paused"] == []
        page.fill("#submit-payload", '{"a": 1, "b": 2}')
        page.click("#submit-form button[type=submit]")
        expect(page.locator("#submit-status")).to_contain_text("→ 3")
        assert not page.errors, page.errors
    finally:
        page.close()


# -- watching it --------------------------------------------------------------------------------
def test_a_worker_appears_then_turns_busy_with_its_job_and_idle_again(
    page: Any, system: LiveSystem
) -> None:
    registry, gate = gated_tasks()
    worker = system.start_worker(registry, concurrency=1)
    row = page.locator(f'#workers tr[data-worker-id="{worker.worker_id}"]')
    expect(row).to_have_attribute("data-state", "idle")
    job = system.submit(task="gate")
    try:
        expect(row).to_have_attribute("data-state", "busy")
        expect(row.locator(f'[data-job-id="{job}"]')).to_have_count(1)
        expect(row).to_contain_text("busy 1/1")
        expect(page.locator("#overview [data-card=workers]")).to_have_attribute("data-busy", "1")
    finally:
        gate.set()
    expect(row).to_have_attribute("data-state", "idle")
    expect(row.locator("[data-job-id]")).to_have_count(0)
    expect(job_row(page, job)).to_have_attribute("data-state", "completed")


def test_the_cards_show_the_numbers_of_api_stats(page: Any, system: LiveSystem) -> None:
    system.start_worker()
    done = [system.submit(task="add", payload={"a": i, "b": 1}) for i in range(3)]
    dead = system.submit(task="fail", retries=0)
    system.submit(task="noop", delay=600)
    for job in done:
        system.wait_state(job, "completed")
    system.wait_state(dead, "dead")
    cards = page.locator("#overview")
    expect(cards.locator("[data-card=completed]")).to_have_attribute("data-value", "3")
    expect(cards.locator("[data-card=dead]")).to_have_attribute("data-value", "1")
    for _ in range(10):  # the system is still; jobs/s moves with each history sample
        next_ticks(page)
        shown = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#overview .card')].map("
            "c => [c.dataset.card, c.dataset.card === 'workers' ? "
            "[Number(c.dataset.idle), Number(c.dataset.busy)] : Number(c.dataset.value)]))"
        )
        stats = system.api("GET", "/api/stats")
        expected = {
            "queued": stats["states"]["queued"],
            "scheduled": stats["states"]["scheduled"],
            "running": stats["states"]["running"],
            "workers": [stats["workers"]["idle"], stats["workers"]["busy"]],
            "completed": stats["totals"]["completed"],
            "failed": stats["totals"]["failed"],
            "requeued": stats["requeued"],
            "dead": stats["states"]["dead"],
            "total": sum(stats["states"].values()),
        }
        # jobs/s is a moving average that changes with every history sample, so between
        # the API's read and the card's it may move: it is checked as a number, not equal
        rate = shown.pop("rate")
        if shown == expected:
            break
    assert shown == expected
    assert isinstance(rate, int | float) and rate >= 0
    assert expected["scheduled"] == 1 and expected["total"] == 5 and expected["workers"] == [1, 0]
    # and what the cards print is those numbers
    expect(cards.locator("[data-card=completed] .value")).to_have_text("3")
    expect(cards.locator("[data-card=total] .value")).to_have_text("5")


# -- changing it --------------------------------------------------------------------------------
def test_a_job_submitted_from_the_form_shows_up_completed_with_its_result(
    page: Any, system: LiveSystem
) -> None:
    system.start_worker()
    expect(page.locator("#submit-task option[value=add]")).to_have_count(1)
    page.select_option("#submit-task", "add")
    page.fill("#submit-payload", '{"a": 2, "b": 40}')
    page.fill("#submit-priority", "2")
    page.click("#submit-form button[type=submit]")
    status = page.locator("#submit-status")
    expect(status).to_have_attribute("data-state", "completed")
    expect(status).to_contain_text("→ 42")
    job = status.get_attribute("data-job-id")
    row = job_row(page, job)
    expect(row).to_have_attribute("data-state", "completed")
    expect(row).to_contain_text("P2")
    row.locator("button").click()
    detail = page.locator("#detail")
    expect(detail.locator("[data-field=result]")).to_have_text("42")
    expect(detail.locator("[data-field=payload]")).to_contain_text('"b": 40')
    expect(detail.locator(".timeline li")).to_have_count(3)  # submitted, started, completed
    assert system.job(job)["priority"] == 2


def test_bad_json_in_the_form_is_refused_in_the_page(page: Any, system: LiveSystem) -> None:
    system.start_worker()
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    expect(page.locator("#submit-task option[value=add]")).to_have_count(1)
    page.fill("#submit-payload", '{"a": 2, "b": }')
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#submit-error")).to_contain_text("not valid JSON")
    expect(page.locator("#submit-payload")).to_have_attribute("aria-invalid", "true")
    page.fill("#submit-payload", "42")
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#submit-error")).to_contain_text("must be a JSON object")
    page.fill("#submit-priority", "11")
    page.fill("#submit-payload", "{}")
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#submit-error")).to_contain_text("1 to 10")
    assert posts == []  # nothing reached the broker
    assert system.api("GET", "/api/stats")["totals"]["submitted"] == 0
    page.fill("#submit-priority", "5")
    page.fill("#submit-payload", '{"a": 1}')  # well-formed, but the broker says what is wrong
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#submit-status")).to_have_attribute("data-state", "dead")
    expect(page.locator("#submit-status")).to_contain_text("missing a required argument")


def test_cancel_from_the_job_detail(page: Any, system: LiveSystem) -> None:
    job = system.submit(task="noop", delay=600)
    row = job_row(page, job)
    expect(row).to_have_attribute("data-state", "scheduled")
    row.locator("button").click()
    detail = page.locator("#detail")
    expect(detail).to_have_attribute("data-state", "scheduled")
    detail.locator("button[data-action=cancel]").click()
    expect(detail).to_have_attribute("data-state", "cancelled")
    expect(detail.locator("button[data-action=cancel]")).to_have_count(0)
    assert system.job(job)["state"] == "cancelled"
    page.click("#detail-close")
    expect(row).to_have_attribute("data-state", "cancelled")


def test_dead_letters_retry_and_purge_from_the_page(page: Any, system: LiveSystem) -> None:
    registry = load_tasks(["conveyor.examples"])
    broken = threading.Event()
    broken.set()

    @task(registry=registry, name="flip")
    def flip() -> str:
        if broken.is_set():
            raise RuntimeError("still broken")
        return "mended"

    system.start_worker(registry)
    retry_me = system.submit(task="flip", retries=0)
    purge_me = system.submit(task="fail", retries=0)
    system.wait_state(retry_me, "dead")
    system.wait_state(purge_me, "dead")
    dlq = page.locator("#dlq-table tbody")
    expect(dlq.locator("tr[data-job-id]")).to_have_count(2)
    expect(dlq.locator(f'tr[data-job-id="{retry_me}"]')).to_contain_text("still broken")
    broken.clear()
    dlq.locator(f'tr[data-job-id="{retry_me}"] button[data-action=retry]').click()
    expect(page.locator("#dlq-status")).to_have_text("1 job retried.")
    expect(job_row(page, retry_me)).to_have_attribute("data-state", "completed")
    assert system.job(retry_me)["result"] == "mended"
    dlq.locator(f'tr[data-job-id="{purge_me}"] button[data-action=purge]').click()
    expect(page.locator("#dlq-status")).to_have_text("1 job purged.")
    expect(dlq.locator("tr[data-job-id]")).to_have_count(0)
    assert system.http is not None
    assert system.http.get(f"/api/jobs/{purge_me}").status_code == 404
    # and all at once, with a second click to confirm
    again = [system.submit(task="fail", retries=0) for _ in range(2)]
    for job in again:
        system.wait_state(job, "dead")
    expect(dlq.locator("tr[data-job-id]")).to_have_count(2)
    page.click("#dlq-purge-all")
    expect(page.locator("#dlq-purge-all")).to_have_attribute("data-armed", "true")
    page.click("#dlq-purge-all")
    expect(page.locator("#dlq-status")).to_have_text("2 jobs purged.")
    expect(dlq.locator("tr[data-job-id]")).to_have_count(0)


def test_pause_stops_dispatch_and_resume_restarts_it(page: Any, system: LiveSystem) -> None:
    system.start_worker()
    queue = page.locator('#queues li[data-queue="default"]')
    queue.locator("button[data-action=pause]").click()
    expect(queue).to_have_attribute("data-paused", "true")
    expect(queue.locator(".badge.paused")).to_have_count(1)
    assert system.api("GET", "/api/stats")["paused"] == ["default"]
    job = system.submit(task="add", payload={"a": 1, "b": 1})
    expect(job_row(page, job)).to_have_attribute("data-state", "queued")
    next_ticks(page, 2)  # two more ticks, and a worker with free slots: still not dispatched
    expect(job_row(page, job)).to_have_attribute("data-state", "queued")
    assert system.job(job)["state"] == "queued"
    expect(page.locator("#overview [data-card=queued]")).to_have_attribute("data-value", "1")
    queue.locator("button[data-action=resume]").click()
    expect(queue).to_have_attribute("data-paused", "false")
    expect(job_row(page, job)).to_have_attribute("data-state", "completed")
    assert system.api("GET", "/api/stats")["paused"] == []


# -- reading it ---------------------------------------------------------------------------------
def test_filters_search_and_server_side_paging(page: Any, system: LiveSystem) -> None:
    ids = [f"job-{i:03}" for i in range(120)]
    fill_store(
        system,
        (
            {"task": "noop", "priority": 1 + i % 3, "queue": f"q{i % 2}", "id": job}
            for i, job in enumerate(ids)
        ),
    )
    expect(page.locator("#job-table tbody tr[data-job-id]")).to_have_count(50)
    expect(page.locator("#job-table tbody tr").first).to_have_attribute("data-job-id", ids[-1])
    page.click("#jobs-older")
    expect(page.locator("#jobs-page")).to_have_text("page 2")
    expect(page.locator("#job-table tbody tr").first).to_have_attribute("data-job-id", ids[69])
    page.click("#jobs-older")
    expect(page.locator("#job-table tbody tr[data-job-id]")).to_have_count(20)
    expect(page.locator("#jobs-older")).to_be_disabled()
    page.click("#jobs-newer")
    expect(page.locator("#jobs-page")).to_have_text("page 2")
    page.select_option("#job-filters select[name=priority]", "1")  # filters start at page 1
    expect(page.locator("#jobs-page")).to_have_text("page 1")
    expect(page.locator("#job-table tbody tr[data-job-id]")).to_have_count(40)
    page.fill("#job-filters input[name=queue]", "q1")
    page.click("#job-filters button[type=submit]")
    expect(page.locator("#job-table tbody tr[data-job-id]")).to_have_count(20)
    page.select_option("#job-filters select[name=priority]", "")
    page.fill("#job-filters input[name=queue]", "")
    page.fill("#job-filters input[name=q]", "job-11")
    page.press("#job-filters input[name=q]", "Enter")
    expect(page.locator("#job-table tbody tr[data-job-id]")).to_have_count(10)
    page.select_option("#job-filters select[name=state]", "completed")
    expect(page.locator("#job-table tbody")).to_contain_text("No jobs match.")


def test_user_text_renders_as_text_never_as_html(page: Any, system: LiveSystem) -> None:
    system.start_worker()
    violations = page.evaluate_handle(
        "(() => { const seen = []; document.addEventListener('securitypolicyviolation', "
        "e => seen.push(e.violatedDirective)); return seen; })()"
    )
    parked = system.submit(task="to_uppercase", payload={"data": XSS}, delay=600)
    dead = system.submit(task="fail", payload={"message": XSS}, retries=0)
    system.wait_state(dead, "dead")
    expect(job_row(page, dead)).to_contain_text(XSS)  # the error column, as text
    expect(page.locator(f'#dlq-table tr[data-job-id="{dead}"]')).to_contain_text(XSS)
    job_row(page, dead).locator("button").click()
    detail = page.locator("#detail")
    expect(detail.locator("[data-field=error]")).to_have_text(f"RuntimeError: {XSS}")
    expect(detail.locator("[data-field=payload]")).to_contain_text("window.__xss=1")
    expect(detail.locator(".attempts")).to_contain_text(XSS)
    page.click("#detail-close")
    job_row(page, parked).locator("button").click()
    expect(detail.locator("[data-field=payload]")).to_contain_text(XSS.replace('"', '\\"'))
    page.click("#detail-close")
    page.select_option("#submit-task", "reverse_string")  # and what the form sends back
    page.fill("#submit-payload", '{"data": ">rc<"}')
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#submit-status")).to_contain_text("→ <cr>")
    assert page.locator("img").count() == 0
    assert page.locator("main script, dialog script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert violations.json_value() == []  # not even an attempt the CSP had to stop


def test_sealed_payloads_show_as_encrypted(page: Any, system: LiveSystem, tmp_path: Path) -> None:
    from conveyor.client.aio import AsyncClient
    from conveyor.security.payload import generate_key

    key = generate_key()
    (tmp_path / "payload.keys").write_text(key + "\n")
    system.start_worker(payload_key_file=tmp_path / "payload.keys")

    async def sealed() -> tuple[str, str]:
        async with AsyncClient(system.broker.url, home=system.home, payload_key=key) as c:
            done = await c.submit("reverse_string", data="top secret")
            failed = await c.submit("fail", message="secret reason", retries=0)
            return done.id, failed.id

    done, failed = system.run(sealed())
    system.wait_state(done, "completed")
    system.wait_state(failed, "dead")
    job_row(page, done).locator("button").click()
    detail = page.locator("#detail")
    expect(detail).to_have_attribute("data-state", "completed")
    expect(detail.locator("[data-field=payload]")).to_have_text("(encrypted)")
    expect(detail.locator("[data-field=result]")).to_have_text("(encrypted)")
    page.click("#detail-close")
    job_row(page, failed).locator("button").click()
    expect(detail.locator("[data-field=error]")).to_have_text("RuntimeError: (encrypted)")
    expect(detail.locator(".attempts")).to_contain_text("RuntimeError: (encrypted)")
    assert "secret" not in page.locator("body").inner_text()


def test_at_phone_width_nothing_overflows_sideways(browser: Any, system: LiveSystem) -> None:
    system.start_worker()
    long_message = "a-very-long-error-message-without-spaces-" * 8
    dead = system.submit(task="fail", payload={"message": long_message}, retries=0)
    system.submit(task="noop", delay=600, queue="a-queue-with-a-long-name")
    system.wait_state(dead, "dead")
    page = new_page(browser, system, width=390)
    try:
        page.goto(system.url)
        expect(page.locator("#conn")).to_have_text("live")
        expect(job_row(page, dead)).to_have_attribute("data-state", "dead")
        expect(page.locator("#chart-throughput canvas")).to_have_count(1)
        overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        assert page.evaluate(overflow) <= 0
        wide = page.evaluate(
            "[...document.querySelectorAll('main *')].filter(e => !e.closest('.table-wrap'))"
            ".filter(e => e.getBoundingClientRect().right > innerWidth + 1).map(e => e.tagName"
            " + '.' + e.className)"
        )
        assert wide == []
        job_row(page, dead).locator("button").click()
        expect(page.locator("#detail [data-field=error]")).to_contain_text(long_message)
        assert page.evaluate(overflow) <= 0
        box = page.locator("#detail").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 391
        assert not page.errors, page.errors
    finally:
        page.close()


def test_the_feed_reconnects_after_a_drop(page: Any, system: LiveSystem) -> None:
    from conveyor.http.server import HttpServer

    old = system.broker.http
    system.run(old.stop())
    expect(page.locator("#conn")).to_have_attribute("data-state", re.compile("reconnecting"))
    system.broker.http = HttpServer(old._config.app, old.host, old.port)
    system.run(system.broker.http.start())
    expect(page.locator("#conn")).to_have_text("live")
    job = system.submit(task="noop")
    expect(job_row(page, job)).to_have_count(1)  # the page heard of it without a reload


@pytest.mark.slow
def test_a_hundred_thousand_jobs_load_and_page_quickly(browser: Any, system: LiveSystem) -> None:
    fill_store(  # a task no worker offers: all of them stay queued
        system,
        ({"task": "bulk", "id": f"bulk-{i:06}", "priority": 1 + i % 10} for i in range(100_000)),
    )
    asked: list[str] = []
    page = new_page(browser, system)
    page.on("request", lambda r: asked.append(r.url) if "/api/jobs" in r.url else None)
    rows = page.locator("#job-table tbody tr[data-job-id]")
    try:
        started = time.monotonic()
        page.goto(system.url)
        expect(rows.first).to_have_attribute("data-job-id", "bulk-099999")
        expect(page.locator("#overview [data-card=queued]")).to_have_attribute(
            "data-value", "100000"
        )
        timings = {"load": time.monotonic() - started}
        for n in range(2, 6):
            started = time.monotonic()
            page.click("#jobs-older")
            expect(rows.first).to_have_attribute(
                "data-job-id", f"bulk-{100_000 - 50 * (n - 1) - 1:06}"
            )
            timings[f"page {n}"] = time.monotonic() - started
        started = time.monotonic()
        page.fill("#job-filters input[name=q]", "bulk-04210")
        page.press("#job-filters input[name=q]", "Enter")
        expect(rows).to_have_count(10)
        timings["search"] = time.monotonic() - started
        started = time.monotonic()
        page.select_option("#job-filters select[name=priority]", "3")
        expect(rows).to_have_count(1)  # bulk-042102
        timings["filter"] = time.monotonic() - started
        assert rows.count() <= 50
        assert max(timings.values()) < 5, timings  # generous: a loaded 2-core machine
        assert all("limit=50" in url for url in asked), asked  # never more than a page
        assert not page.errors, page.errors
    finally:
        page.close()

"""The dashboard's Schedules, Limits and Workflows panels in real headless Chromium, over a
real broker and real workers: what the API says shows up on the page (live, no reload),
and what the page's buttons do is what the API says afterwards."""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import expect

from conveyor import Client, chain, group, sig
from conveyor.security.tokens import Role, TokenRegistry
from tests.http.conftest import LiveSystem, new_page


def test_schedules_show_up_and_their_buttons_act(page: Any, system: LiveSystem) -> None:
    table = page.locator("#schedule-table tbody")
    expect(table).to_contain_text("No schedule")
    body = {"name": "nightly", "task": "add", "cron": "30 2 * * *", "tz": "Europe/Berlin",
            "kwargs": {"a": 1, "b": 2}, "queue": "reports"}  # fmt: skip
    system.api("POST", "/api/schedules", json=body)
    row = table.locator('tr[data-schedule="nightly"]')
    expect(row).to_have_attribute("data-paused", "false")  # added through the API: appears
    expect(row).to_contain_text("cron 30 2 * * *")
    expect(row).to_contain_text("Europe/Berlin")
    expect(row).to_contain_text("reports")
    expect(row.locator("[data-cell=next]")).not_to_have_text("\u2013")

    row.locator("button[data-action=pause]").click()
    expect(row).to_have_attribute("data-paused", "true")
    expect(row.locator("[data-cell=state]")).to_have_text("paused")
    assert system.api("GET", "/api/schedules/nightly")["paused"] is True
    expect(row.locator("[data-cell=next]")).to_have_text("\u2013")
    row.locator("button[data-action=resume]").click()
    expect(row).to_have_attribute("data-paused", "false")
    assert system.api("GET", "/api/schedules/nightly")["paused"] is False

    row.locator("button[data-action=run]").click()
    expect(page.locator("#schedules-status")).to_contain_text("Schedule nightly ran now")
    last_job = system.api("GET", "/api/schedules/nightly")["last_job"]
    assert last_job is not None and system.job(last_job)["task"] == "add"
    expect(row.locator(f'button[title="{last_job}"]')).to_have_count(1)

    system.api("POST", "/api/schedules/nightly/pause")  # from elsewhere: the page follows
    expect(row).to_have_attribute("data-paused", "true")
    row.locator("button[data-action=remove]").click()
    expect(row.locator("button[data-action=remove]")).to_have_attribute("data-armed", "true")
    row.locator("button[data-action=remove]").click()
    expect(page.locator("#schedules-status")).to_have_text("Schedule nightly removed.")
    expect(row).to_have_count(0)
    assert system.api("GET", "/api/schedules") == []


def test_limits_show_what_they_hold_back_and_the_form_sets_and_clears(
    page: Any, system: LiveSystem
) -> None:
    rates = page.locator("#rate-table tbody")
    expect(rates).to_contain_text("No rate limit")
    system.api("PUT", "/api/limits/task:mail", json={"value": "1/h"})
    for _ in range(3):
        system.submit(task="mail")  # no worker offers it: queued behind its rate
    row = rates.locator('tr[data-target="task:mail"]')
    expect(row).to_contain_text("1/h")
    expect(row.locator("[data-cell=queued]")).to_have_text("3")

    page.fill("#limit-form input[name=target]", "key:domain:")
    page.fill("#limit-form input[name=value]", "2")
    page.click("#limit-form button[type=submit]")
    expect(page.locator("#limits-status")).to_have_text("Limit key:domain: set to 2.")
    assert system.api("GET", "/api/limits")["set"] == {"task:mail": "1/h", "key:domain:": 2}
    key = page.locator('#concurrency-table tbody tr[data-target="key:domain:"]')
    expect(key.locator("[data-cell=waiting]")).to_have_text("0")

    page.fill("#limit-form input[name=target]", "task:mail")
    page.fill("#limit-form input[name=value]", "fast")
    page.click("#limit-form button[type=submit]")
    expect(page.locator("#limits-error")).to_contain_text("must be a rate")
    assert system.api("GET", "/api/limits")["set"]["task:mail"] == "1/h"  # unchanged

    row.locator("button[data-action=clear]").click()
    expect(page.locator("#limits-status")).to_have_text("Limit task:mail cleared.")
    expect(row).to_have_count(0)
    assert system.api("GET", "/api/limits")["set"] == {"key:domain:": 2}


def test_a_producer_sees_the_limits_but_may_not_set_them(browser: Any, system: LiveSystem) -> None:
    producer, _ = TokenRegistry(system.home / "tokens.json").create(Role.PRODUCER, now=time.time())
    system.api("PUT", "/api/limits/key:domain:", json={"value": 2})
    tab = new_page(browser, system, token=producer)
    try:
        tab.goto(system.url)
        key = tab.locator('#concurrency-table tbody tr[data-target="key:domain:"]')
        expect(key).to_contain_text("broker")
        key.locator("button[data-action=clear]").click()
        expect(tab.locator("#limits-error")).to_contain_text("Not allowed with this token")
        assert system.api("GET", "/api/limits")["set"] == {"key:domain:": 2}
        assert not tab.errors, tab.errors
    finally:
        tab.close()


def test_workflows_are_listed_and_a_click_shows_their_jobs(page: Any, system: LiveSystem) -> None:
    expect(page.locator("#workflow-table tbody")).to_contain_text("No workflow yet")
    system.start_worker()
    with Client(system.broker.url, home=system.home) as client:
        done = client.submit_workflow(chain(sig("add", 1, 2), sig("add", 10)))
        assert done.result(timeout=20) == 13
        stuck = client.submit_workflow(group(sig("nobody_offers_this"), sig("add", 2, 2)))
    row = page.locator(f'#workflow-table tbody tr[data-workflow="{done.id}"]')
    expect(row).to_have_attribute("data-state", "completed")
    expect(row).to_contain_text("chain")
    expect(row).to_contain_text("2 completed")
    other = page.locator(f'#workflow-table tbody tr[data-workflow="{stuck.id}"]')
    expect(other).to_contain_text("group")
    expect(other).to_contain_text("1 queued · 1 completed")  # live: the second one ran
    expect(other).to_have_attribute("data-state", "running")

    other.locator("button").click()
    members = page.locator("#workflow-members tbody")
    expect(page.locator("#workflow-title")).to_contain_text("group")
    expect(members.locator("tr")).to_have_count(2)
    first = members.locator(f'tr[data-job-id="{stuck.ids[0]}"]')
    expect(first).to_have_attribute("data-state", "queued")
    expect(members.locator(f'tr[data-job-id="{stuck.ids[1]}"]')).to_have_attribute(
        "data-state", "completed"
    )
    system.api("POST", f"/api/jobs/{stuck.ids[0]}/cancel")  # the open view follows
    expect(first).to_have_attribute("data-state", "cancelled")
    expect(other).to_have_attribute("data-state", "failed")
    assert system.api("GET", f"/api/workflows/{stuck.id}")["state"] == "failed"
    first.locator("button").click()  # a member opens the job's own detail
    expect(page.locator("#detail-title")).to_have_text(f"Job {stuck.ids[0]}")

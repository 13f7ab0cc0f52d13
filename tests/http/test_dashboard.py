"""The dashboard in real headless Chromium, over a real broker and real workers."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.http.conftest import LiveSystem


def test_smoke(page: Any, system: LiveSystem) -> None:
    system.start_worker()
    system.submit(task="add", payload={"a": 1, "b": 2})
    expect(page.locator("#tls-badge")).to_have_text("TLS: ON")
    expect(page.locator("#job-table tbody tr[data-state=completed]")).to_have_count(1)
    page.screenshot(path="/tmp/smoke.png", full_page=True)

"""Browser fixtures: a real broker (with its HTTP API) and real workers on a loop in a
background thread, and Debian's Chromium driven by Playwright's sync API in the test's
own thread. The broker's loop keeps serving while a test waits on the page."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.config import ensure_broker_files
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import TaskRegistry, load_tasks

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKEN_KEY = "conveyor.token"  # api.js keeps the tab's token under this sessionStorage key
T = TypeVar("T")
WAIT = 15_000  # ms: a page waits on the live feed (a tick a second) on a busy machine


def _expect_patience() -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT)


class LiveSystem:
    """A broker with HTTP on 127.0.0.1 (ephemeral ports) and its workers, in one thread."""

    def __init__(self, home: Path, store_url: str = "memory://") -> None:
        self.home = home
        self.loop = asyncio.new_event_loop()
        self.broker = Broker(BrokerConfig(port=0, store_url=store_url, home=home, http_port=0))
        self.workers: list[tuple[Worker, asyncio.Task[None]]] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.token = ""
        self.url = ""
        self.http: httpx.Client | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the broker's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LiveSystem:
        self._thread.start()
        self.run(self.broker.start())
        self.url = self.broker.dashboard_url or ""
        self.token = (self.home / "admin.token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.http is not None:
            self.http.close()
        with contextlib.suppress(Exception):
            self.run(self._stop_workers())
        self.run(self.broker.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def start_worker(self, registry: TaskRegistry | None = None, **kwargs: Any) -> Worker:
        async def start() -> Worker:
            kwargs.setdefault("concurrency", 2)
            worker = Worker(
                registry=registry if registry is not None else load_tasks(["conveyor.examples"]),
                url=self.broker.url,
                home=self.home,
                **kwargs,
            )
            task = asyncio.get_running_loop().create_task(worker.run())
            self.workers.append((worker, task))
            await asyncio.wait_for(worker.connected.wait(), 10)
            return worker

        return self.run(start())

    async def _stop_workers(self) -> None:
        for worker, _ in self.workers:
            worker.stop()
        for _, task in self.workers:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)

    # -- the API, for arranging and checking ---------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.http is not None
        response = self.http.request(method, path, **kwargs)
        assert response.is_success, response.text
        return response.json()

    def submit(self, **body: Any) -> str:
        return str(self.api("POST", "/api/jobs", json=body)["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/jobs/{job_id}"))

    def wait_state(self, job_id: str, *states: str, timeout: float = 20) -> str:
        """Until the job is in one of ``states``, re-checked on each event of the broker."""

        async def wait() -> str:
            changed = asyncio.Event()
            unsubscribe = self.broker.core.hub.subscribe(lambda event: changed.set())
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        changed.clear()
                        state = (await self.broker.core.get(job_id)).state.value
                        if state in states:
                            return state
                        await changed.wait()
            finally:
                unsubscribe()

        return self.run(wait(), timeout + 5)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[LiveSystem]:
    home = tmp_path / "home"
    ensure_broker_files(home, now=time.time())
    with LiveSystem(home) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (make browser installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    _expect_patience()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        # one context for the module; each test opens its own tab, on its own broker's
        # origin (a port of its own), so nothing carries over from one test to the next
        chromium.shared_context = chromium.new_context()
        try:
            yield chromium
        finally:
            chromium.close()


class PageErrors(list[str]):
    """Uncaught errors and CSP refusals seen by a page (a test ends with none)."""


def new_page(
    browser: Any,
    system: LiveSystem,
    *,
    width: int = 1280,
    login: bool = True,
    token: str | None = None,
) -> Any:
    page = browser.shared_context.new_page()  # a tab of its own: its own sessionStorage
    page.set_viewport_size({"width": width, "height": 900})
    page.set_default_timeout(WAIT)
    if login:
        page.add_init_script(f"sessionStorage.setItem({TOKEN_KEY!r}, {token or system.token!r})")
    errors = PageErrors()
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    page.on(
        "console",
        lambda message: (
            errors.append(f"console: {message.text}")
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    page.errors = errors
    return page


@pytest.fixture
def page(browser: Any, system: LiveSystem) -> Iterator[Any]:
    """The dashboard at 1280 px, signed in with the admin token, live."""
    tab = new_page(browser, system)
    tab.goto(system.url)
    tab.locator("#conn[data-state=live]").wait_for()
    try:
        yield tab
    finally:
        errors = list(tab.errors)
        tab.close()
    assert not errors, errors

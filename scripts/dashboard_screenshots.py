"""Screenshots of the dashboard under load, for the README: docs/dashboard-desktop.png
(1280 px wide) and docs/dashboard-phone.png (390 px wide).

It starts a real broker (memory store, HTTP on 127.0.0.1, ephemeral ports) and three
workers in a throwaway home, submits a mix of the example tasks for a while (some slow,
some failing, some delayed, every priority), then opens the page in Debian's Chromium::

    .venv/bin/python scripts/dashboard_screenshots.py [--seconds 75] [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.config import ensure_broker_files
from conveyor.validation import parse_job
from conveyor.worker.runner import Worker
from conveyor.worker.tasks import load_tasks

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def job_spec(rng: random.Random) -> dict[str, Any]:
    """One job of the mix: mostly quick, some slow, a few failing or delayed."""
    roll = rng.random()
    priority = rng.choice([1, 2, 3, 5, 5, 5, 5, 7, 9, 10])
    if roll < 0.25:
        spec = {"task": "add", "kwargs": {"a": rng.randint(0, 99), "b": rng.randint(0, 99)}}
    elif roll < 0.45:
        spec = {"task": "fibonacci", "kwargs": {"n": rng.randint(10, 2000)}}
    elif roll < 0.60:
        spec = {"task": "slow_task", "kwargs": {"seconds": round(rng.uniform(0.2, 2.5), 2)}}
    elif roll < 0.70:
        spec = {"task": "is_prime", "kwargs": {"n": rng.randint(10**6, 10**12)}}
    elif roll < 0.80:
        spec = {"task": "reverse_string", "kwargs": {"data": "conveyor"}}
    elif roll < 0.93:
        spec = {"task": "flaky", "kwargs": {"p": 0.4}, "retries": 1, "queue": "reports"}
    elif roll < 0.97:
        spec = {"task": "fail", "kwargs": {"message": "upstream said no"}, "retries": 0}
    else:
        spec = {"task": "noop", "delay": rng.uniform(30, 600)}
    return {**spec, "priority": priority}


async def load(broker: Broker, seconds: float, rate: float, stop: threading.Event) -> None:
    """Submit about ``rate`` jobs a second, in small bursts, for ``seconds``."""
    rng = random.Random(7)
    core = broker.core
    until = time.monotonic() + seconds
    while time.monotonic() < until and not stop.is_set():
        burst = max(1, int(rng.expovariate(1 / (rate / 4))))
        now = core.clock.now()
        await core.submit(
            [parse_job(job_spec(rng), now, core.config.limits.max_payload) for _ in range(burst)]
        )
        await asyncio.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=75, help="load before the shots")
    parser.add_argument("--rate", type=float, default=40, help="jobs submitted per second")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="conveyor-shots-") as tmp:
        home = Path(tmp) / "home"
        ensure_broker_files(home, now=time.time())
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def run(coro: Any, timeout: float = 60) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

        broker = Broker(BrokerConfig(port=0, store_url="memory://", home=home, http_port=0))
        run(broker.start())
        workers: list[tuple[Worker, Any]] = []

        async def start_worker(name: str, queues: list[str], concurrency: int) -> None:
            worker = Worker(
                registry=load_tasks(["conveyor.examples"]),
                url=broker.url,
                home=home,
                concurrency=concurrency,
                queues=queues,
                name=name,
            )
            workers.append((worker, asyncio.get_running_loop().create_task(worker.run())))
            await asyncio.wait_for(worker.connected.wait(), 10)

        run(start_worker("worker-a", ["default"], 6))
        run(start_worker("worker-b", ["default"], 6))
        run(start_worker("reports-1", ["reports"], 3))
        stop = threading.Event()
        token = (home / "admin.token").read_text().strip()
        url = broker.dashboard_url or ""
        print(f"dashboard at {url}, loading for {opts.seconds:g} s ...")
        pending = asyncio.run_coroutine_threadsafe(load(broker, 3600, opts.rate, stop), loop)
        try:
            time.sleep(opts.seconds)  # a script, not a test: let the charts fill
            shoot(url, token, opts.out)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                pending.result(10)

            async def stop_all() -> None:
                for worker, _ in workers:
                    worker.stop(force=True)
                for _, task in workers:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.wait_for(task, 10)
                await broker.stop()

            run(stop_all())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


def shoot(url: str, token: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # the top of the page: numbers, charts, workers, queues (the tables run on below)
        for name, width, height in (("desktop", 1280, 1560), ("phone", 390, 2300)):
            context = browser.new_context(viewport={"width": width, "height": height})
            context.add_init_script(f"sessionStorage.setItem('conveyor.token', {token!r})")
            page = context.new_page()
            page.goto(url)
            page.locator("#conn[data-state=live]").wait_for()
            page.wait_for_function("() => Number(document.body.dataset.ticks || 0) >= 3")
            page.locator("#workers tr[data-state=busy]").first.wait_for()
            path = out / f"dashboard-{name}.png"
            page.screenshot(
                path=str(path),
                clip={"x": 0, "y": 0, "width": width, "height": height},
                full_page=True,
            )
            print(f"saved {path}")
            context.close()
        browser.close()


if __name__ == "__main__":
    main()

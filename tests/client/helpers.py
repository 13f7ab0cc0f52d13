"""What the client tests share."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conveyor import Client
from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.worker.tasks import TaskRegistry
from tests.flow.conftest import MODULES


def count_requests(c: Any) -> dict[str, int]:
    """Count the frames a client sends, by type (the sync Client's pipelined ones too:
    they are counted where its connection's session numbers them)."""
    counts: dict[str, int] = {}
    if isinstance(c, Client):
        owner, name = c._transport.session, "request"
    else:
        owner, name = c, "_request"
    request = getattr(owner, name)

    def counting(frame: dict[str, Any], **kwargs: Any) -> Any:
        counts[frame["t"]] = counts.get(frame["t"], 0) + 1
        return request(frame, **kwargs)

    setattr(owner, name, counting)
    return counts


class Restartable:
    """A broker on a SQLite file that :meth:`restart` stops and starts again on the same
    file and port (so a client's URL stays right)."""

    def __init__(self, broker: Broker, config: BrokerConfig) -> None:
        self.broker = broker
        self.config = config

    @property
    def url(self) -> str:
        return self.broker.url

    async def restart(self) -> None:
        await self.broker.stop()
        self.broker = Broker(self.config)
        await self.broker.start()


@contextlib.asynccontextmanager
async def restartable_broker(
    home: Path, db: Path, registry: TaskRegistry
) -> AsyncIterator[Restartable]:
    """A :class:`Restartable` broker with one worker of ``registry`` (4 slots) on it; the
    worker reconnects by itself after a restart. Both are stopped at the end."""
    from conveyor.worker.runner import Worker

    config = BrokerConfig(port=0, store_url=f"sqlite:///{db}", home=home)
    system = Restartable(Broker(config), config)
    await system.broker.start()
    system.config = dataclasses.replace(config, port=system.broker.port)
    worker = Worker(registry=registry, modules=MODULES, url=system.url, home=home, concurrency=4)
    running = asyncio.get_running_loop().create_task(worker.run())
    try:
        yield system
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await system.broker.stop()

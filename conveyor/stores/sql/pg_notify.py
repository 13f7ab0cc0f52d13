"""LISTEN on the schema's channel and tell the broker what the other brokers changed.

The triggers of :mod:`conveyor.stores.sql.pg_schema` NOTIFY ``conveyor_<schema>`` in the
transaction that changes the jobs, so a notification arrives only once the change is
committed. Payloads are JSON: ``{"b": broker, "a": [[queue, task], ...] | null}`` (jobs
became queued), ``{"b": broker, "f": [id, ...]}`` (jobs became final) and
``{"b": broker, "c": [id, ...]}`` (a cancel was asked for running jobs),
``{"b": broker, "k": [key, ...] | null}`` (jobs holding these concurrency keys stopped
running: a dispatch pass, see :mod:`~conveyor.stores.sql.pg_limits`) and
``{"b": broker, "m": name}`` (a setting changed; its own are ignored). ``b`` is the
broker whose connection made the change. A broker hears its own queued and final jobs
too (cheap: a coalesced dispatch pass, a look-up among its waiters), so that a change it
made but whose reply it lost still reaches its waiters; it ignores its own cancels, which
it has aborted already.

One dedicated connection listens. When it is lost, it reconnects with a growing pause,
and then tells the listener that anything may have changed (``None``), since
notifications sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import psycopg
from psycopg import sql

from conveyor.stores.base import StoreListener
from conveyor.stores.sql.pg_conn import Connections, first_line

log = logging.getLogger("conveyor.store")

RETRY_FIRST = 0.1
RETRY_MAX = 2.0


def channel_of(schema: str) -> str:
    return f"conveyor_{schema}"


class NotifyListener:
    """A task holding one LISTEN connection; :meth:`start`, :meth:`stop`."""

    def __init__(self, db: Connections, listener: StoreListener) -> None:
        self.db = db
        self.channel = channel_of(db.schema)
        self.broker = db.broker_id
        self.listener = listener
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.received = 0

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):  # connecting keeps trying in the background
            await asyncio.wait_for(self.connected.wait(), 10)

    async def stop(self) -> None:
        self._stopping = True  # as well as the cancel, which psycopg may swallow (Python 3.11)
        if self._task is not None:
            self._task.cancel()
            # wait, not await: a cancel of our caller must reach it, not end up suppressed
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        pause = RETRY_FIRST
        first = True
        failing = False  # since the connection was lost: retries are quiet
        while not self._stopping:
            try:
                conn = await self.db.connect()
            except psycopg.Error as exc:  # said once an outage, not at every retry
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "PostgreSQL store: cannot LISTEN (%s); retrying", first_line(exc))
                failing = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.connected.set()
                pause = RETRY_FIRST
                if failing:
                    log.info("PostgreSQL store: listening again")
                failing = False
                if not first:  # notifications sent while we were away are lost
                    self.listener.available(None)
                    self.listener.finished(None)
                    self.listener.setting_changed(None)
                first = False
                async for note in conn.notifies():
                    self._dispatch(note.payload)
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning("PostgreSQL store: lost the LISTEN connection (%s)", first_line(exc))
                failing = True
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        self.received += 1
        try:
            if "a" in message:
                pairs = message["a"]
                self.listener.available(None if pairs is None else [tuple(p) for p in pairs])
            if "k" in message:  # slots of concurrency keys freed: parked jobs may go now
                self.listener.available(None)
            if "f" in message:
                self.listener.finished(list(message["f"]))
            if "m" in message and message.get("b") != self.broker:
                self.listener.setting_changed(str(message["m"]))
            if "c" in message and message.get("b") != self.broker:
                self.listener.cancel_requested(list(message["c"]))
        except Exception:  # a listener bug must not end the LISTEN loop
            log.exception("PostgreSQL store: a change listener failed")

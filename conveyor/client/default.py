"""The client a task object submits through when it is given none: one per thread."""

from __future__ import annotations

import threading

from conveyor.client.sync import Client

_local = threading.local()


def default_client() -> Client:
    """This thread's Client, made on first use from the environment and ``$CONVEYOR_HOME``
    (``CONVEYOR_BROKER_URL``, ``CONVEYOR_TOKEN``, ``CONVEYOR_CA`` ...)."""
    client: Client | None = getattr(_local, "client", None)
    if client is None:
        client = _local.client = Client()
    return client

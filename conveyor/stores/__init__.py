"""Store engines, chosen by URL: ``memory://`` and ``sqlite:///path`` (PostgreSQL to come)."""

from __future__ import annotations

from pathlib import Path

from conveyor.errors import ConfigError
from conveyor.stores.base import Claimant, Inserted, JobFilter, Page, Store
from conveyor.stores.memory import MemoryStore
from conveyor.stores.sqlite import SqliteStore

DEFAULT_STORE_URL_TEMPLATE = "sqlite:///{home}/conveyor.db"

__all__ = [
    "DEFAULT_STORE_URL_TEMPLATE",
    "Claimant",
    "Inserted",
    "JobFilter",
    "MemoryStore",
    "Page",
    "SqliteStore",
    "Store",
    "default_store_url",
    "open_store",
]


def open_store(url: str) -> Store:
    """The engine for ``url``, not yet opened: the caller awaits ``store.open(now)``.

    ``memory://`` is volatile; ``sqlite:///relative.db`` and ``sqlite:////absolute.db``
    (``?synchronous=full`` to survive power loss) are durable.
    """
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryStore(url)
    if scheme == "sqlite":
        return SqliteStore(url)
    raise ConfigError(
        f"unsupported store URL {url!r}: use memory:// or sqlite:///path/to/conveyor.db"
    )


def default_store_url(home: Path) -> str:
    """The embedded default: a SQLite database in the Conveyor home directory (absolute)."""
    return DEFAULT_STORE_URL_TEMPLATE.format(home=str(Path(home).resolve()).rstrip("/"))

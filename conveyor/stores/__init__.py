"""Store engines behind one interface; :func:`open_store` picks one by URL."""

from __future__ import annotations

from pathlib import Path

from conveyor.errors import ConfigError
from conveyor.stores.base import Store
from conveyor.stores.memory import MemoryStore


def default_store_url(home: Path) -> str:
    return f"sqlite:///{Path(home).resolve()}/conveyor.db"


def open_store(url: str) -> Store:
    if url.startswith("memory://"):
        return MemoryStore(url)
    if url.startswith("sqlite://"):
        from conveyor.stores.sqlite import SqliteStore  # type: ignore[import-not-found,unused-ignore]

        return SqliteStore(url)  # type: ignore[no-any-return,unused-ignore]
    raise ConfigError(f"unsupported store URL {url!r}: use memory:// or sqlite:///path")

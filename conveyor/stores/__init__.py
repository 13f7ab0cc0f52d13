"""Store engines, chosen by URL: ``memory://``, ``sqlite:///path`` and ``postgresql://…``."""

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
    (``?synchronous=full`` to survive power loss) are durable; ``postgresql://`` (or
    ``postgres://``) ``user@host:port/db?schema=NAME`` is durable and several brokers can
    share it.
    """
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryStore(url)
    if scheme == "sqlite":
        return SqliteStore(url)
    if scheme in ("postgresql", "postgres"):
        try:  # psycopg is the optional extra conveyor[postgres]
            from conveyor.stores.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"the PostgreSQL store needs psycopg: pip install 'conveyor[postgres]' ({exc})"
            ) from exc
        return PostgresStore(url)
    raise ConfigError(
        f"unsupported store URL {url!r}: use memory://, sqlite:///path/to/conveyor.db "
        "or postgresql://user@host/db?schema=conveyor"
    )


def default_store_url(home: Path) -> str:
    """The embedded default: a SQLite database in the Conveyor home directory (absolute)."""
    return DEFAULT_STORE_URL_TEMPLATE.format(home=str(Path(home).resolve()).rstrip("/"))

"""Rate and concurrency limits as people write them, checked once at every edge.

A limit is a *target* and a *value*:

=====================  ==============================  ===============================
target                 value                           meaning
=====================  ==============================  ===============================
``task:NAME``          a rate: ``10/s``, ``100/m``      dispatch that task's jobs no faster
``queue:NAME``         a rate                           dispatch that queue's jobs no faster
``key:PREFIX``         a count: ``2``                   at most that many running jobs share
                                                        any one concurrency key starting
                                                        with PREFIX
=====================  ==============================  ===============================

A rate is ``N/UNIT``: N a positive number, UNIT ``s``, ``m`` or ``h`` (``10/m`` is one
job every 6 seconds); a bare number is per second. The CLI and the broker flags write
``TARGET=VALUE`` (``--rate task:add=100/s``); the protocol and the HTTP API send target
and value apart. Every parser raises :class:`~conveyor.errors.InvalidJob` (code
``invalid``) naming what is wrong, so each edge reports it the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

from conveyor.errors import InvalidJob
from conveyor.limits import MAX_QUEUE_NAME, MAX_TASK_NAME, NAME_PATTERN

MAX_CONCURRENCY_KEY: Final = 200  # characters of a job's concurrency key (and of a prefix)
MAX_RATE: Final = 1_000_000.0  # jobs a second
MAX_KEY_LIMIT: Final = 100_000  # running jobs per key
MAX_LIMITS: Final = 1000  # targets with a limit set on one broker

KINDS: Final = ("task", "queue", "key")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
_NAME_RE = re.compile(NAME_PATTERN)
_RATE_RE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?:/\s*([smh]))?\s*")


def invalid(fld: str, message: str) -> InvalidJob:
    """An ``invalid`` error naming ``fld``; the message starts with the field's name. (Here
    rather than in :mod:`conveyor.validation`, which sits above and re-exports it.)"""
    return InvalidJob("invalid", message if message.startswith(fld) else f"{fld} {message}", fld)


def check_name(value: Any, fld: str, max_len: int) -> str:
    """``value`` as a name (task, queue, key...): a non-empty string of at most ``max_len``
    letters, digits and ``_ . : -``."""
    if not isinstance(value, str) or not value:
        raise invalid(fld, "must be a non-empty string")
    if len(value) > max_len:
        raise invalid(fld, f"must be at most {max_len} characters")
    if not _NAME_RE.fullmatch(value):
        raise invalid(fld, "may only contain letters, digits and _ . : -")
    return value


@dataclass(frozen=True, slots=True)
class Rate:
    """So many jobs per ``per`` seconds."""

    count: float
    per: float

    @property
    def per_second(self) -> float:
        return self.count / self.per

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.per]
        return f"{self.count:g}/{unit}"


def parse_rate(text: Any, fld: str = "rate") -> Rate:
    """``"10/s"``, ``"100/m"``, ``"0.5/s"``, ``"20"`` (per second) -> :class:`Rate`."""
    if not isinstance(text, str) or not text.strip():
        raise invalid(fld, "must be a rate such as 10/s, 100/m or 1000/h")
    match = _RATE_RE.fullmatch(text)
    if match is None:
        raise invalid(fld, f"must be a rate such as 10/s, 100/m or 1000/h, not {text[:40]!r}")
    count, per = float(match.group(1)), _UNITS[match.group(2) or "s"]
    if not math.isfinite(count) or count <= 0:
        raise invalid(fld, f"must be more than 0 jobs per unit of time, not {text[:40]!r}")
    if count / per > MAX_RATE:
        raise invalid(fld, f"must be at most {MAX_RATE:g} jobs a second")
    return Rate(count, per)


def parse_key_limit(value: Any, fld: str = "limit") -> int:
    """A per-key concurrency limit: an integer from 1 (``"2"`` as text too, for the CLI)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEY_LIMIT:
        raise invalid(fld, f"must be an integer from 1 to {MAX_KEY_LIMIT}")
    return value


def check_concurrency_key(value: Any, fld: str = "concurrency_key") -> str:
    """A job's concurrency key: 1 to 200 characters of the name alphabet."""
    return check_name(value, fld, MAX_CONCURRENCY_KEY)


def parse_target(text: Any, fld: str = "target") -> tuple[str, str]:
    """``"task:add"`` -> ``("task", "add")``; ``"key:domain:"`` -> ``("key", "domain:")``."""
    if not isinstance(text, str) or ":" not in text:
        raise invalid(fld, "must be task:NAME, queue:NAME or key:PREFIX")
    kind, name = text.split(":", 1)
    if kind not in KINDS:
        raise invalid(fld, f"must be task:NAME, queue:NAME or key:PREFIX, not {text[:60]!r}")
    try:
        if kind == "task":
            check_name(name, fld, MAX_TASK_NAME)
        elif kind == "queue":
            check_name(name, fld, MAX_QUEUE_NAME)
        else:
            check_concurrency_key(name, fld)
    except InvalidJob as exc:
        raise invalid(fld, f"{kind} name: {exc.message.removeprefix(fld + ' ')}") from None
    return kind, name


def parse_value(kind: str, value: Any, fld: str = "value") -> Rate | int:
    """The value for a target of this kind: a rate for task and queue, a count for key."""
    return parse_key_limit(value, fld) if kind == "key" else parse_rate(value, fld)


def parse_assignment(text: Any, fld: str = "limit") -> tuple[str, str | int]:
    """``"task:add=100/s"`` -> ``("task:add", "100/s")`` (the value normalised)."""
    if not isinstance(text, str) or "=" not in text:
        raise invalid(fld, "must be TARGET=VALUE, such as task:add=100/s or key:domain:=2")
    target, value = text.rsplit("=", 1)
    kind, _ = parse_target(target, fld)
    return target, normal(kind, parse_value(kind, value, fld))


def normal(kind: str, value: Rate | int) -> str | int:
    """How a checked value is stored and shown: ``"100/s"``, or the count."""
    return value if isinstance(value, int) else str(value)


def check_table(raw: Any, fld: str = "limits") -> dict[str, str | int]:
    """A whole table ``{target: value}`` (as stored, or sent), each entry checked."""
    if not isinstance(raw, dict):
        raise invalid(fld, "must map targets to values")
    if len(raw) > MAX_LIMITS:
        raise invalid(fld, f"may hold at most {MAX_LIMITS} limits")
    out: dict[str, str | int] = {}
    for target, value in raw.items():
        kind, _ = parse_target(target, fld)
        out[target] = normal(kind, parse_value(kind, value, fld))
    return out

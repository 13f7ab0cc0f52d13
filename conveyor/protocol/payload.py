"""Job payloads and results as opaque MessagePack bytes (docs/protocol.md, section 6.1).

A payload is the MessagePack encoding of the two-element array ``[args, kwargs]``; a result
is the encoding of the task's return value. Producers pack a payload once and workers
unpack it once; the broker only checks its size and that it starts like a two-element
array (:func:`looks_like_call`), stores the bytes and passes them on. Results travel the
same way back.

Values are JSON-compatible: nil, booleans, integers, finite floats, strings, lists and maps
with string keys. Integers beyond MessagePack's 64-bit range (Python's are unbounded)
travel as extension type :data:`BIGINT_EXT` whose data is the number in ASCII decimal,
e.g. ``-12345678901234567890123``. :func:`check_json` finds what is not JSON-compatible
and says where, before anything is sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from conveyor.limits import INT_MAX, INT_MIN, MAX_DEPTH

BIGINT_EXT = 1  # MessagePack extension type of integers outside -2**63 .. 2**64-1
_DECIMAL = re.compile(rb"-?[0-9]+")


class PayloadError(ValueError):
    """Bytes that are not a valid payload or result; or a value that cannot be one."""


def default(value: Any) -> Any:
    """msgpack's ``default`` hook: integers beyond 64 bits become :data:`BIGINT_EXT`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return msgpack.ExtType(BIGINT_EXT, str(value).encode("ascii"))
    raise TypeError(f"{type(value).__name__} is not JSON-compatible")


def ext_hook(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``: :data:`BIGINT_EXT` back to an int; any other type is refused."""
    if code == BIGINT_EXT:
        if not _DECIMAL.fullmatch(data):
            raise PayloadError("a big-integer extension does not hold a decimal number")
        return int(data)
    raise PayloadError(f"MessagePack extension type {code} is not allowed in a payload")


def pack(value: Any) -> bytes:
    """MessagePack bytes of a JSON-compatible value (big integers as extensions)."""
    try:
        return msgpack.packb(value, use_bin_type=True, default=default)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(str(exc)) from exc


def unpack(data: bytes) -> Any:
    """The value in ``data``; :class:`PayloadError` if it is not one valid MessagePack value."""
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=ext_hook, max_bin_len=0
        )
    except PayloadError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise PayloadError(f"not valid MessagePack ({type(exc).__name__}: {exc})") from exc


def pack_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """The payload bytes of a call (check it with :func:`check_json` first)."""
    return pack([list(args), dict(kwargs)])


def unpack_call(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from payload bytes; :class:`PayloadError` if malformed."""
    value = unpack(data)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], list)
        or not isinstance(value[1], dict)
    ):
        raise PayloadError("a payload must be the array [args (array), kwargs (map)]")
    return value[0], value[1]


def looks_like_call(data: bytes) -> bool:
    """The broker's envelope check: bytes that start a two-element array (fixarray, or the
    longer array16/array32 forms a non-minimal encoder may use)."""
    return data[:1] == b"\x92" or data[:3] == b"\xdc\x00\x02" or data[:5] == b"\xdd\x00\x00\x00\x02"


EMPTY_CALL = pack_call((), {})


def check_json(value: Any, where: str, depth: int = 1) -> None:
    """Raise :class:`PayloadError` naming the place (``kwargs['when']``) of anything in
    ``value`` that is not JSON-compatible or is nested deeper than MAX_DEPTH levels.

    ``value`` itself (args or kwargs) is at level ``depth``.
    """
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        return  # any size: big ones travel as an extension
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"{where} is {value!r}: NaN and infinity are not JSON-compatible")
        return
    if depth > MAX_DEPTH:
        raise PayloadError(f"{where} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(
                    f"{where} has the key {key!r} ({type(key).__name__}): map keys must be "
                    "strings to be JSON-compatible"
                )
            check_json(item, f"{where}[{key!r}]", depth + 1)
        return
    raise PayloadError(
        f"{where} is a {type(value).__name__}, which is not JSON-compatible{_hint(value)}"
    )


def _hint(value: Any) -> str:
    name = type(value).__name__
    if name in ("datetime", "date", "time"):
        return " (pass an ISO 8601 string or epoch seconds)"
    if isinstance(value, bytes | bytearray):
        return " (pass text, e.g. base64)"
    if isinstance(value, set | frozenset):
        return " (pass a list)"
    return ""


def fits_msgpack_int(value: int) -> bool:
    return INT_MIN <= value <= INT_MAX


def array_header(n: int) -> bytes:
    """The MessagePack header of an array of ``n`` elements (the shortest form)."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def pack_packed(items: Sequence[bytes]) -> bytes:
    """The array of values already packed (results), without decoding them."""
    return array_header(len(items)) + b"".join(items)


def prepend_args(payload: bytes, packed_args: bytes) -> bytes:
    """The payload with the values of the packed array ``packed_args`` put before its
    positional arguments (a workflow step's inputs, docs/workflows.md)."""
    args, kwargs = unpack_call(payload)
    extra = unpack(packed_args)
    if not isinstance(extra, list):
        raise PayloadError("inputs must be an array")
    return pack_call([*extra, *args], kwargs)

"""End-to-end payload encryption: producers and workers share keys the broker never sees.

Theory of operation
-------------------
A :class:`PayloadCipher` wraps :class:`cryptography.fernet.MultiFernet` (AES-128-CBC with
HMAC-SHA256: authenticated). The first key encrypts; every key decrypts. That is the whole of
key rotation: put the new key first, keep the old ones until no job sealed with them is left,
then drop them.

What is sealed, and how it still passes the broker's checks (args a list, kwargs a map):

==================  ==========================================================================
job arguments       ``args: []``, ``kwargs: {"__conveyor_encrypted__": token}`` where the token
                    seals ``msgpack([context, [args, kwargs]])``
a result            ``{"__conveyor_encrypted__": token}`` sealing ``msgpack([context, result])``
an error            ``type`` stays clear (retry policy and dashboards need it); ``message`` and
                    ``traceback`` become the text ``"__conveyor_encrypted__:" + token``
==================  ==========================================================================

The *context* names the purpose (call, result, message, traceback), the job id and the task,
so whoever holds the database cannot move a sealed payload to another job, another task or
another field: opening checks it and fails with :class:`PayloadDecryptError`.

What the broker still sees: task name, queue, priority, timing, attempts, error *type* and the
approximate size of every payload. See docs/security.md, "End-to-end payload encryption".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from conveyor.errors import ConfigError, InvalidJob, PayloadDecryptError
from conveyor.job import Job
from conveyor.limits import MAX_ERROR_MESSAGE, MAX_TRACEBACK
from conveyor.protocol.payload import PayloadError, pack, unpack

ENVELOPE_KEY: Final = "__conveyor_encrypted__"
TEXT_PREFIX: Final = ENVELOPE_KEY + ":"
KEY_FILE_ENV: Final = "CONVEYOR_PAYLOAD_KEY_FILE"
MAX_SEALED_MESSAGE: Final = MAX_ERROR_MESSAGE  # a sealed message must fit what the broker keeps
MAX_SEALED_TRACEBACK: Final = MAX_TRACEBACK

CALL, RESULT, MESSAGE, TRACEBACK = "call", "result", "message", "traceback"

PayloadKey = str | bytes | Sequence[str | bytes]
"""One Fernet key (44 url-safe base64 characters) or several, the first one primary."""


def generate_key() -> str:
    """A new random Fernet key (32 bytes, url-safe base64), as text."""
    return Fernet.generate_key().decode("ascii")


def context(purpose: str, job_id: str, task: str) -> str:
    """What a sealed payload is bound to: ``"call:<job id>:<task>"`` and the like."""
    return f"{purpose}:{job_id}:{task}"


def is_sealed(value: Any) -> bool:
    """Whether ``value`` is a sealed envelope (a result or kwargs map, or an error text)."""
    if isinstance(value, str):
        return value.startswith(TEXT_PREFIX)
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(ENVELOPE_KEY), str)


def is_sealed_call(args: Any, kwargs: Any) -> bool:
    """Whether a job's arguments are sealed (``args`` empty, ``kwargs`` an envelope)."""
    return not args and is_sealed(kwargs)


class PayloadCipher:
    """Seals and opens job payloads with one or more Fernet keys (the first one encrypts)."""

    __slots__ = ("_fernet", "key_count")

    def __init__(self, fernets: Sequence[Fernet]) -> None:
        if not fernets:
            raise ConfigError("a payload cipher needs at least one key")
        self._fernet = MultiFernet(list(fernets))
        self.key_count = len(fernets)

    def __repr__(self) -> str:
        return f"<PayloadCipher keys={self.key_count}>"  # never the keys themselves

    @classmethod
    def from_keys(cls, keys: PayloadKey) -> PayloadCipher:
        """A cipher from one key or a list of keys, the first one primary."""
        items: list[str | bytes] = [keys] if isinstance(keys, str | bytes) else list(keys)
        fernets = []
        for n, key in enumerate(items, 1):
            try:
                fernets.append(Fernet(key.strip()))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"payload key #{n} is not a Fernet key (32 bytes in url-safe base64, "
                    "44 characters); make one with `conveyor keygen`"
                ) from exc
        return cls(fernets)

    # -- bytes ---------------------------------------------------------------------------
    def _seal(self, payload: Any, ctx: str) -> str:
        try:
            packed = pack([ctx, payload])
        except PayloadError as exc:
            raise InvalidJob("invalid", f"cannot seal the payload: {exc}", "payload") from exc
        return self._fernet.encrypt(packed).decode("ascii")

    def _open(self, token: str, ctx: str) -> Any:
        try:
            packed = self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError) as exc:
            raise PayloadDecryptError(
                "cannot decrypt the payload: no configured key fits, or it was altered"
            ) from exc
        try:
            sealed_ctx, payload = unpack(packed)
        except (ValueError, TypeError) as exc:
            raise PayloadDecryptError("the decrypted payload is malformed") from exc
        if sealed_ctx != ctx:
            raise PayloadDecryptError(
                f"the payload was sealed for {sealed_ctx!r}, not {ctx!r} (moved between jobs?)"
            )
        return payload

    # -- calls and values ----------------------------------------------------------------
    def seal_call(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], *, ctx: str = ""
    ) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` as the broker should see them: ``([], {envelope})``."""
        return [], {ENVELOPE_KEY: self._seal([list(args), dict(kwargs)], ctx)}

    def open_call(
        self, args: list[Any], kwargs: dict[str, Any], *, ctx: str = ""
    ) -> tuple[list[Any], dict[str, Any]]:
        """The real ``(args, kwargs)``; plain (unsealed) arguments pass through."""
        if not is_sealed_call(args, kwargs):
            return args, kwargs
        opened = self._open(kwargs[ENVELOPE_KEY], ctx)
        if (
            not isinstance(opened, list)
            or len(opened) != 2
            or not isinstance(opened[0], list)
            or not isinstance(opened[1], dict)
        ):
            raise PayloadDecryptError("the decrypted arguments are not [args, kwargs]")
        return opened[0], opened[1]

    def seal_value(self, value: Any, *, ctx: str = "") -> dict[str, str]:
        return {ENVELOPE_KEY: self._seal(value, ctx)}

    def open_value(self, value: Any, *, ctx: str = "") -> Any:
        """The value inside an envelope; anything else passes through."""
        if isinstance(value, dict) and is_sealed(value):
            return self._open(value[ENVELOPE_KEY], ctx)
        return value

    # -- error texts ---------------------------------------------------------------------
    def seal_text(self, text: str, *, ctx: str = "", limit: int = MAX_SEALED_MESSAGE) -> str:
        """``text`` sealed into at most ``limit`` characters (cut first if it must be).

        Messages keep their head, tracebacks their tail (where the error was raised).
        """
        budget = (limit - len(TEXT_PREFIX)) * 3 // 4 - 57 - 16 - len(ctx.encode()) - 16
        data = text.encode("utf-8", "replace")
        if len(data) > budget:
            keep = max(budget - 4, 0)
            if ctx.startswith(TRACEBACK):
                data = b"...\n" + data[len(data) - keep :]
            else:
                data = data[:keep] + b"..."
        return TEXT_PREFIX + self._seal(data.decode("utf-8", "ignore"), ctx)

    def open_text(self, text: Any, *, ctx: str = "") -> Any:
        if isinstance(text, str) and text.startswith(TEXT_PREFIX):
            opened = self._open(text[len(TEXT_PREFIX) :], ctx)
            if not isinstance(opened, str):
                raise PayloadDecryptError("the decrypted text is not a string")
            return opened
        return text

    def seal_error(self, error: Mapping[str, str], job_id: str, task: str) -> dict[str, str]:
        """The error map with ``message`` and ``traceback`` sealed; ``type`` stays clear."""
        out = dict(error)
        out["message"] = self.seal_text(
            str(error.get("message", "")), ctx=context(MESSAGE, job_id, task)
        )
        out["traceback"] = self.seal_text(
            str(error.get("traceback", "")),
            ctx=context(TRACEBACK, job_id, task),
            limit=MAX_SEALED_TRACEBACK,
        )
        return out

    # -- jobs ----------------------------------------------------------------------------
    def open_job(self, job: Job) -> Job:
        """The job with whatever is sealed opened; a part that does not open stays sealed."""
        changes: dict[str, Any] = {}
        jid, task = job.id, job.task
        if is_sealed_call(job.args, job.kwargs):
            call = _attempt(self.open_call, job.args, job.kwargs, ctx=context(CALL, jid, task))
            if call is not _UNOPENED:
                changes["args"], changes["kwargs"] = call
        if is_sealed(job.result):
            result = _attempt(self.open_value, job.result, ctx=context(RESULT, jid, task))
            if result is not _UNOPENED:
                changes["result"] = result
        if job.error is not None:
            error = dict(job.error)
            for name, purpose in (("message", MESSAGE), ("traceback", TRACEBACK)):
                text = _attempt(self.open_text, error.get(name), ctx=context(purpose, jid, task))
                if text is not _UNOPENED:
                    error[name] = text
            if error != job.error:
                changes["error"] = error
        events = tuple(self._open_event(e, jid, task) for e in job.events)
        if events != job.events:
            changes["events"] = events
        return dataclasses.replace(job, **changes) if changes else job

    def _open_event(self, ev: dict[str, Any], job_id: str, task: str) -> dict[str, Any]:
        """A ``failed`` event carries ``"<type>: <message>"`` and the attempt's traceback;
        open the sealed parts."""
        out = ev
        text = ev.get("error")
        if isinstance(text, str) and TEXT_PREFIX in text:
            head, _, token = text.partition(TEXT_PREFIX)
            opened = _attempt(
                self.open_text, TEXT_PREFIX + token, ctx=context(MESSAGE, job_id, task)
            )
            if opened is not _UNOPENED:
                out = {**out, "error": head + opened}
        tb = ev.get("traceback")
        if isinstance(tb, str) and tb.startswith(TEXT_PREFIX):
            opened = _attempt(self.open_text, tb, ctx=context(TRACEBACK, job_id, task))
            if opened is not _UNOPENED:
                out = {**out, "traceback": opened}
        return out


_UNOPENED: Final = object()


def _attempt(fn: Callable[..., Any], *args: Any, ctx: str) -> Any:
    """``fn(*args, ctx=ctx)``, or :data:`_UNOPENED` when it cannot be decrypted."""
    try:
        return fn(*args, ctx=ctx)
    except PayloadDecryptError:
        return _UNOPENED


def load_payload_keys(path: str | Path) -> PayloadCipher:
    """Read a key file: one key a line, the first primary; blanks and ``#`` comments skipped."""
    path = Path(path)
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the payload key file {path}: {exc}") from exc
    keys = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not keys:
        raise ConfigError(
            f"the payload key file {path} holds no key; add one from `conveyor keygen`"
        )
    try:
        return PayloadCipher.from_keys(keys)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def resolve_cipher(
    key: PayloadKey | PayloadCipher | None = None,
    key_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> PayloadCipher | None:
    """The cipher from a key (or keys), else a key file, else ``$CONVEYOR_PAYLOAD_KEY_FILE``."""
    if isinstance(key, PayloadCipher):
        return key
    if key is not None:
        return PayloadCipher.from_keys(key)
    if key_file is None:
        key_file = (os.environ if env is None else env).get(KEY_FILE_ENV) or None
    return None if key_file is None else load_payload_keys(key_file)

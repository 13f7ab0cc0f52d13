"""Bearer tokens with roles, kept in a JSON file that stores only their hashes.

A token is ``cvy_`` followed by 32 random bytes in urlsafe base64. The plaintext is shown
once, at creation; the registry keeps its SHA-256. A fast hash is right here: slow,
salted hashes (bcrypt, scrypt, argon2) exist to stop brute force of *low-entropy*
passwords, but guessing 256 random bits is hopeless at any speed, and a fast hash keeps
every HELLO cheap.

The file is shared by the broker and the ``conveyor token`` CLI: every change re-reads
the file under a lock, then writes it atomically (temp file + ``os.replace``, mode 0600),
and a running broker notices the new file through :meth:`TokenRegistry.reload_if_changed`
(which :meth:`TokenRegistry.verify` calls, so a revoke takes effect at the next HELLO).
Open connections are checked too: the broker's token watch asks
:meth:`TokenRegistry.why_inactive` about each one's token every half second, so a revoked,
removed or expired token loses its connections as well.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from conveyor.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock, atomic writes only
    fcntl = None  # type: ignore[assignment]

TOKEN_PREFIX = "cvy_"
MAX_TOKEN_LENGTH = 256  # anything longer cannot be ours; do not even hash it
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_FILE_VERSION = 1


class Role(enum.StrEnum):
    PRODUCER = "producer"
    WORKER = "worker"
    ADMIN = "admin"


class DuplicateTokenName(ValueError):
    """A token with that name already exists (revoked names stay taken)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What the registry knows about a token; never the token itself."""

    name: str
    role: Role
    created_at: float
    expires_at: float | None
    revoked: bool
    hash_prefix: str  # first hex digits of the SHA-256, to tell tokens apart in listings

    def is_active(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class _Entry:
    info: TokenInfo
    digest: str  # full SHA-256 hex of the token


def hash_token(token: str) -> str:
    """The SHA-256 hex digest the registry stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenRegistry:
    """Tokens by name, persisted in ``path``. Not thread-safe; one per process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._entries: dict[str, _Entry] = {}
        self._by_digest: dict[str, TokenInfo] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._read()

    # -- queries ---------------------------------------------------------------------

    def verify(self, token: str, now: float) -> TokenInfo | None:
        """The token's info if it is known, not revoked and not expired; else None."""
        self.reload_if_changed()
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = hash_token(token)
        found: TokenInfo | None = None
        # Compare against every entry in constant time. The digests are of 256-bit random
        # secrets, so a timing leak would not help much anyway; this keeps it a non-issue.
        # tuple(): create/revoke may run in a thread and replace entries meanwhile
        for entry in tuple(self._entries.values()):
            if hmac.compare_digest(entry.digest, digest):
                found = entry.info
        if found is None or not found.is_active(now):
            return None
        return found

    def why_inactive(self, digest: str, now: float, *, reload: bool = True) -> str | None:
        """Why the token with this SHA-256 (see :func:`hash_token`) may no longer be used:
        ``"token revoked"``, ``"token expired"`` or ``"token removed"``; None while it is
        active. With ``reload``, re-reads the file first if it changed (else one ``stat``)."""
        if reload:
            self.reload_if_changed()
        info = self._by_digest.get(digest)
        if info is None:
            return "token removed"
        if info.revoked:
            return "token revoked"
        if not info.is_active(now):
            return "token expired"
        return None

    def list(self) -> builtins.list[TokenInfo]:
        """Every token, revoked and expired ones included, oldest first."""
        self.reload_if_changed()
        return sorted((e.info for e in self._entries.values()), key=lambda i: i.created_at)

    def get(self, name: str) -> TokenInfo | None:
        self.reload_if_changed()
        entry = self._entries.get(name)
        return entry.info if entry else None

    # -- changes ---------------------------------------------------------------------

    def create(
        self, role: Role | str, name: str | None = None, ttl: float | None = None, *, now: float
    ) -> tuple[str, TokenInfo]:
        """Make a token; return its plaintext (shown once, never stored) and its info.

        ``ttl`` is in seconds; None means it never expires. Raises ValueError on a bad
        role, name or ttl and :class:`DuplicateTokenName` if the name is taken.
        """
        role = Role(role)
        if name is not None and not _NAME.fullmatch(name):
            raise ValueError(
                f"token name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-' "
                "and start with a letter or digit"
            )
        if ttl is not None and not 0 < ttl < 100 * 365 * 86400:  # NaN and infinity too
            raise ValueError("a token's ttl must be a positive number of seconds (< 100 years)")
        token = new_token()
        digest = hash_token(token)
        with self._locked():
            if name is None:
                name = self._fresh_name(role)
            elif name in self._entries:
                raise DuplicateTokenName(f"a token named {name!r} already exists")
            info = TokenInfo(
                name=name,
                role=role,
                created_at=now,
                expires_at=None if ttl is None else now + ttl,
                revoked=False,
                hash_prefix=digest[:8],
            )
            self._entries[name] = _Entry(info, digest)
            self._write()
        return token, info

    def revoke(self, name: str) -> bool:
        """Revoke the named token; False if there is no such token."""
        with self._locked():
            entry = self._entries.get(name)
            if entry is None:
                return False
            if not entry.info.revoked:
                info = replace(entry.info, revoked=True)
                self._entries[name] = _Entry(info, entry.digest)
                self._write()
        return True

    def remove(self, name: str) -> bool:
        """Forget the named token entirely (freeing its name); False if unknown."""
        with self._locked():
            if self._entries.pop(name, None) is None:
                return False
            self._write()
        return True

    def save(self) -> None:
        """Write the registry file (creating it empty if it does not exist yet)."""
        with self._locked():
            self._write()

    # -- the file --------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed on disk since we last read or wrote it.

        Returns whether it was re-read. A file that vanished empties the registry (fail
        closed); a file that cannot be parsed raises :class:`ConfigError`.
        """
        if self._file_stamp() == self._stamp:
            return False
        self._read()
        return True

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        # os.replace gives a new inode, so this catches writes within one mtime tick too.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> None:
        stamp = self._file_stamp()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            self._index()
            return
        except OSError as exc:  # e.g. `conveyor token` was run as another user
            raise ConfigError(f"cannot read token file {self.path}: {exc.strerror}") from None
        self._entries = _parse(raw, self.path)
        self._stamp = stamp
        self._index()

    def _index(self) -> None:
        # a new dict, swapped in whole: the event loop may read it while a thread writes
        self._by_digest = {e.digest: e.info for e in self._entries.values()}

    def _write(self) -> None:
        doc = {
            "version": _FILE_VERSION,
            "tokens": [_dump(e) for e in self._entries.values()],
        }
        data = json.dumps(doc, indent=2).encode("utf-8") + b"\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # a leftover of a crash could have another mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._stamp = self._file_stamp()
        self._index()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the sidecar lock file and work on the latest contents of the registry."""
        if fcntl is None:  # pragma: no cover
            self._read()
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._read()
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _fresh_name(self, role: Role) -> str:
        while True:
            name = f"{role.value}-{secrets.token_hex(2)}"
            if name not in self._entries:
                return name


def _dump(entry: _Entry) -> dict[str, Any]:
    info = entry.info
    return {
        "name": info.name,
        "role": info.role.value,
        "sha256": entry.digest,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked,
    }


def _parse(raw: bytes, path: Path) -> dict[str, _Entry]:
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != _FILE_VERSION:
            raise ValueError(f"expected a version {_FILE_VERSION} token file")
        entries: dict[str, _Entry] = {}
        for item in doc["tokens"]:
            digest = str(item["sha256"])
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"token {item.get('name')!r} has a malformed hash")
            expires = item.get("expires_at")
            info = TokenInfo(
                name=str(item["name"]),
                role=Role(item["role"]),
                created_at=float(item["created_at"]),
                expires_at=None if expires is None else float(expires),
                revoked=bool(item.get("revoked", False)),
                hash_prefix=digest[:8],
            )
            entries[info.name] = _Entry(info, digest)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"token file {path} is damaged: {exc}") from None
    return entries

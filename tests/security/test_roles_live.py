"""The role table, enforced by a running broker: every client frame type, every role.

:data:`MATRIX` spells out every row (client frame type x role) independently of
``conveyor.security.roles``: ``yes`` (allowed), ``no`` (ERROR ``forbidden``) or ``held``
(allowed only about a job dispatched to this very connection, else ``forbidden``).
Each case opens its own raw TLS connection (no client library in between), sends one
minimal, schema-valid frame of one type and checks what the broker does with it:
a frame the role may not send gets ERROR ``forbidden`` echoing its rid, and the
connection stays usable; a frame the role may send gets anything but ``forbidden``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from conveyor.broker.app import Broker
from conveyor.client.aio import AsyncClient
from conveyor.errors import AuthenticationError, PermissionDenied
from conveyor.protocol.frames import PROTOCOL_VERSION, FrameType
from conveyor.security.roles import BROKER_ONLY_FRAMES, ROLE_PERMISSIONS, SCOPED, may_send
from conveyor.security.tokens import Role, TokenRegistry, hash_token
from tests.security.rawconn import Raw

F = FrameType
CLIENT_FRAMES = frozenset(FrameType) - BROKER_ONLY_FRAMES


def minimal_frame(ftype: FrameType, rid: int) -> dict[str, Any]:
    """A schema-valid frame of ``ftype`` that is harmless to the other cases."""
    frames: dict[FrameType, dict[str, Any]] = {
        F.HELLO: {"v": PROTOCOL_VERSION, "token": "cvy_x"},
        F.ERROR: {"code": "invalid", "message": "a client-side note"},  # not a fatal code
        F.PING: {},
        F.PONG: {},
        F.GOODBYE: {"reason": "bye"},
        F.SUBMIT: {"jobs": [{"task": "add", "args": [1, 2]}]},
        F.GET: {"id": "no-such-job"},
        F.GET_MANY: {"ids": ["no-such-job"]},
        F.WAIT: {"id": "no-such-job", "timeout": 0},
        F.LIST: {"limit": 1},
        F.STATS: {},
        F.CANCEL: {"id": "no-such-job"},
        F.DLQ_RETRY: {"ids": []},
        F.DLQ_PURGE: {"ids": []},  # an empty list: purge nothing (no ids would purge all)
        F.TOKEN_CREATE: {"role": "producer", "name": f"made-{rid}"},
        F.TOKEN_LIST: {},
        F.TOKEN_REVOKE: {"name": "no-such-token"},
        F.QUEUE_PAUSE: {"queue": "roles-test"},
        F.QUEUE_RESUME: {"queue": "roles-test"},
        F.LIMITS: {},
        F.SCHEDULE: {"op": "list"},
        F.READY: {"tasks": ["add"], "queues": ["default"], "concurrency": 1},
        F.REPORT: {"results": []},
        F.HEARTBEAT: {"running": []},
        F.PROGRESS: {"jobs": []},
        F.RELEASE: {"jobs": []},
        F.DRAIN: {},
    }
    # every frame carries a rid, even types whose schema has none (extra fields are
    # ignored), so that a FORBIDDEN reply can be matched to it
    return {"t": ftype.value, "rid": rid, **frames[ftype]}


# frames the broker answers with a reply carrying the request's rid (when allowed)
ANSWERED = frozenset(
    {
        F.PING,
        F.SUBMIT,
        F.GET,
        F.GET_MANY,
        F.WAIT,
        F.LIST,
        F.STATS,
        F.CANCEL,
        F.DLQ_RETRY,
        F.DLQ_PURGE,
        F.TOKEN_CREATE,
        F.TOKEN_LIST,
        F.TOKEN_REVOKE,
        F.QUEUE_PAUSE,
        F.QUEUE_RESUME,
        F.LIMITS,
        F.SCHEDULE,
        F.READY,
    }
)
# frames the broker may answer without a rid, or not at all; checked with a PING after them
# (HELLO and GOODBYE end or break the session and have their own tests)
UNANSWERED = CLIENT_FRAMES - ANSWERED - {F.HELLO, F.GOODBYE}
WORKER_FRAMES_NEEDING_READY = (F.REPORT, F.HEARTBEAT, F.PROGRESS, F.RELEASE, F.DRAIN)


MATRIX_TEXT = """
frame          producer  worker  admin
ping           yes       yes     yes
pong           yes       yes     yes
error          yes       yes     yes
goodbye        yes       yes     yes
hello          again     again   again
submit         yes       no      yes
get            yes       held    yes
get_many       yes       no      yes
wait           yes       no      yes
list           yes       no      yes
stats          yes       no      yes
cancel         yes       no      yes
ready          no        yes     yes
report         no        yes     yes
heartbeat      no        yes     yes
progress       no        yes     yes
release        no        yes     yes
drain          no        yes     yes
dlq_retry      no        no      yes
dlq_purge      no        no      yes
token_create   no        no      yes
token_list     no        no      yes
token_revoke   no        no      yes
queue_pause    no        no      yes
queue_resume   no        no      yes
limits         no        no      yes
schedule       yes       no      yes
"""
"""``again``: a second HELLO is a fatal ``bad_frame`` for every role (the handshake is done)."""


def _matrix() -> dict[tuple[Role, FrameType], str]:
    header, *rows = MATRIX_TEXT.split("\n")[1:-1]
    roles = [Role(r) for r in header.split()[1:]]
    table: dict[tuple[Role, FrameType], str] = {}
    for row in rows:
        name, *cells = row.split()
        for role, cell in zip(roles, cells, strict=True):
            table[role, F(name)] = cell
    return table


MATRIX = _matrix()


def new_token(home: Path, role: Role, **kwargs: Any) -> str:
    token, _ = TokenRegistry(home / "tokens.json").create(role, now=time.time(), **kwargs)
    return token


def test_every_client_frame_type_is_covered() -> None:
    # a new frame type fails here until it has a minimal frame and a place in the matrix
    assert {F(minimal_frame(t, 1)["t"]) for t in CLIENT_FRAMES} == CLIENT_FRAMES
    assert ANSWERED | UNANSWERED | {F.HELLO, F.GOODBYE} == CLIENT_FRAMES
    assert set(ROLE_PERMISSIONS) == set(Role)
    assert set(MATRIX) == {(r, t) for r in Role for t in CLIENT_FRAMES}


def test_the_matrix_is_the_role_table() -> None:
    # the spelled-out matrix and conveyor.security.roles say the same thing
    for (role, ftype), cell in MATRIX.items():
        assert may_send(role, ftype) is (cell != "no"), (role, ftype)
        assert (ftype in SCOPED.get(role, frozenset())) is (cell == "held"), (role, ftype)


def expected(role: Role, ftype: FrameType) -> bool:
    """Whether the minimal frame (about a job nobody holds) is allowed."""
    return MATRIX[role, ftype] == "yes"


@pytest.mark.parametrize("ftype", sorted(ANSWERED | UNANSWERED), ids=str)
@pytest.mark.parametrize("role", list(Role), ids=str)
async def test_role_matrix(broker: Broker, home: Path, role: Role, ftype: FrameType) -> None:
    raw = await Raw.open(broker.port, home, token=new_token(home, role))
    try:
        if ftype in WORKER_FRAMES_NEEDING_READY and may_send(role, F.READY):
            # a worker's frames after READY reach their handler (not a "send ready" conflict)
            ready_rid = raw.rid()
            raw.send(minimal_frame(F.READY, ready_rid))
            assert (await raw.until(ready_rid))[-1]["t"] == "ok"
        rid = raw.rid()
        raw.send(minimal_frame(ftype, rid))
        if ftype in ANSWERED:
            replies = await raw.until(rid)
        else:
            ping_rid = raw.rid()
            raw.send({"t": "ping", "rid": ping_rid})
            replies = await raw.until(ping_rid)
        mine = [f for f in replies if f.get("rid") == rid]
        if expected(role, ftype):
            assert all(f.get("code") != "forbidden" for f in replies), replies
            if ftype in ANSWERED:
                assert mine[-1]["t"] != "error" or mine[-1]["code"] in {"not_found"}, mine
        else:
            assert len(mine) == 1, replies
            assert mine[0]["t"] == "error" and mine[0]["code"] == "forbidden", mine
            if MATRIX[role, ftype] == "held":
                assert "only the jobs dispatched to it" in mine[0]["message"], mine
            else:
                assert role.value in mine[0]["message"] and ftype.value in mine[0]["message"]
        # forbidden or not, the session goes on
        await raw.ping()
    finally:
        await raw.close()
    assert broker.metrics["forbidden"] == (0 if expected(role, ftype) else 1)


@pytest.mark.parametrize("role", list(Role), ids=str)
async def test_role_matrix_goodbye(broker: Broker, home: Path, role: Role) -> None:
    # GOODBYE: allowed to every role, and it ends the session (no forbidden, no reply)
    assert MATRIX[role, F.GOODBYE] == "yes"
    raw = await Raw.open(broker.port, home, token=new_token(home, role))
    try:
        raw.send(minimal_frame(F.GOODBYE, raw.rid()))
        assert await raw.recv() is None
    finally:
        await raw.close()
    assert broker.metrics["forbidden"] == 0


async def test_a_worker_reads_only_the_jobs_dispatched_to_it(broker: Broker, home: Path) -> None:
    # the "held" row: GET by a worker works for a job its connection holds, and for no other
    assert MATRIX[Role.WORKER, F.GET] == "held"
    admin = await Raw.open(broker.port, home, hello=True)
    worker = await Raw.open(broker.port, home, token=new_token(home, Role.WORKER))
    other = await Raw.open(broker.port, home, token=new_token(home, Role.WORKER))

    async def get(raw: Raw, job_id: str) -> dict[str, Any]:
        rid = raw.rid()
        raw.send({"t": "get", "rid": rid, "id": job_id})
        return next(f for f in await raw.until(rid) if f.get("rid") == rid)

    async def submit(task: str, **kwargs: Any) -> str:
        rid = admin.rid()
        admin.send({"t": "submit", "rid": rid, "jobs": [{"task": task, "kwargs": kwargs}]})
        return str((await admin.until(rid))[-1]["jobs"][0]["id"])

    try:
        secret = await submit("mine", secret="s3cret")
        unrelated = await submit("theirs", secret="not yours")
        # before READY the worker holds nothing: forbidden, even for a job that exists
        assert (await get(worker, secret))["code"] == "forbidden"
        rid = worker.rid()
        worker.send(
            {"t": "ready", "rid": rid, "tasks": ["mine"], "queues": ["default"], "concurrency": 1}
        )
        frames = await worker.until(rid)
        dispatched = [f for f in frames if f["t"] == "dispatch"]
        while not dispatched:
            frame = await worker.recv()
            assert frame is not None
            if frame["t"] == "dispatch":
                dispatched.append(frame)
        [job] = dispatched[0]["jobs"]
        assert job["id"] == secret
        # its own job: readable, arguments and all
        reply = await get(worker, secret)
        assert reply["t"] == "job" and reply["job"]["kwargs"] == {"secret": "s3cret"}, reply
        # anything else: forbidden, with no hint whether it exists
        for job_id in (unrelated, "no-such-job"):
            refused = await get(worker, job_id)
            assert (refused["t"], refused["code"]) == ("error", "forbidden"), refused
            assert "secret" not in str(refused)
        # another worker connection does not hold it
        assert (await get(other, secret))["code"] == "forbidden"
        # once reported, it is no longer the worker's to read
        worker.send(
            {
                "t": "report",
                "results": [{"id": secret, "lease": job["lease"], "ok": True, "result": "done"}],
            }
        )
        while (frame := await worker.recv()) is not None and frame["t"] != "acked":
            pass
        assert (await get(worker, secret))["code"] == "forbidden"
        # the admin (and a producer) still read everything
        assert (await get(admin, unrelated))["job"]["kwargs"] == {"secret": "not yours"}
    finally:
        for raw in (admin, worker, other):
            await raw.close()
    assert broker.metrics["forbidden"] == 5


@pytest.mark.parametrize(
    ("role", "ftype"),
    [
        (Role.WORKER, F.SUBMIT),
        (Role.WORKER, F.CANCEL),
        (Role.WORKER, F.DLQ_PURGE),
        (Role.WORKER, F.TOKEN_CREATE),
        (Role.PRODUCER, F.READY),
        (Role.PRODUCER, F.REPORT),
        (Role.PRODUCER, F.HEARTBEAT),
        (Role.PRODUCER, F.DLQ_RETRY),
        (Role.PRODUCER, F.DLQ_PURGE),
        (Role.PRODUCER, F.TOKEN_CREATE),
        (Role.PRODUCER, F.TOKEN_LIST),
        (Role.PRODUCER, F.TOKEN_REVOKE),
        (Role.PRODUCER, F.QUEUE_PAUSE),
        (Role.WORKER, F.QUEUE_RESUME),
        (Role.WORKER, F.STATS),
        (Role.WORKER, F.LIST),
        (Role.WORKER, F.WAIT),
        (Role.WORKER, F.SCHEDULE),
    ],
    ids=str,
)
async def test_escalations_spelled_out(
    broker: Broker, home: Path, role: Role, ftype: FrameType
) -> None:
    # independent of ROLE_PERMISSIONS: these must stay forbidden whatever the table says
    raw = await Raw.open(broker.port, home, token=new_token(home, role))
    try:
        for _ in range(2):  # twice: the first refusal did not break anything
            rid = raw.rid()
            raw.send(minimal_frame(ftype, rid))
            [reply] = [f for f in await raw.until(rid) if f.get("rid") == rid]
            assert (reply["t"], reply["code"]) == ("error", "forbidden")
            await raw.ping()
    finally:
        await raw.close()
    assert broker.metrics["forbidden"] == 2
    assert len(TokenRegistry(home / "tokens.json").list()) == 2  # admin + the one above


async def test_admin_may_send_everything(broker: Broker, home: Path, start_worker) -> None:
    await start_worker()
    raw = await Raw.open(broker.port, home, token=(home / "admin.token").read_text().strip())
    try:
        rid = raw.rid()
        raw.send(minimal_frame(F.SUBMIT, rid))
        [submitted] = [f for f in await raw.until(rid) if f.get("rid") == rid]
        job_id = submitted["jobs"][0]["id"]
        rid = raw.rid()
        raw.send({"t": "wait", "rid": rid, "id": job_id, "timeout": 10})
        [done] = [f for f in await raw.until(rid) if f.get("rid") == rid]
        assert done["job"]["state"] == "completed" and done["job"]["result"] == 3
        for ftype in sorted(CLIENT_FRAMES - {F.HELLO, F.GOODBYE}):
            rid = raw.rid()
            raw.send(minimal_frame(ftype, rid))
            await raw.ping()
        assert broker.metrics["forbidden"] == 0
        raw.send(minimal_frame(F.GOODBYE, raw.rid()))
        late = []  # replies of async handlers may still come; then goodbye closes
        while (frame := await raw.recv()) is not None:
            late.append(frame)
        assert all(f.get("code") != "forbidden" for f in late), late
    finally:
        await raw.close()


@pytest.mark.parametrize("role", list(Role), ids=str)
async def test_a_second_hello_is_a_fatal_bad_frame(broker: Broker, home: Path, role: Role) -> None:
    assert MATRIX[role, F.HELLO] == "again"
    token = new_token(home, role)
    raw = await Raw.open(broker.port, home, token=token)
    try:
        reply = await raw.hello(token)
        assert reply is not None and (reply["t"], reply["code"]) == ("error", "bad_frame")
        assert await raw.recv() is None
    finally:
        await raw.close()


# -- tokens: expired, revoked, managed over the protocol ----------------------------------
async def refused(broker: Broker, home: Path, token: str) -> None:
    """HELLO with ``token`` gets ERROR unauthorized, then the broker closes."""
    raw = await Raw.open(broker.port, home)
    try:
        reply = await raw.hello(token)
        assert reply is not None, "closed without an ERROR frame"
        assert (reply["t"], reply["code"]) == ("error", "unauthorized"), reply
        assert await raw.recv() is None
    finally:
        await raw.close()


async def test_expired_token_is_refused(broker: Broker, home: Path) -> None:
    # made 100 s ago with a 1 s ttl: expired by the broker's clock
    registry = TokenRegistry(home / "tokens.json")
    expired, info = registry.create(Role.ADMIN, "old", ttl=1, now=time.time() - 100)
    assert info.expires_at is not None and info.expires_at < broker.clock.now()
    fresh, _ = registry.create(Role.ADMIN, "fresh", ttl=3600, now=time.time())
    await refused(broker, home, expired)
    assert broker.metrics["auth_failures"] == 1
    raw = await Raw.open(broker.port, home, token=fresh)  # a ttl alone does not refuse
    await raw.ping()
    await raw.close()


async def test_revoked_token_is_refused(home: Path, broker_config) -> None:
    registry = TokenRegistry(home / "tokens.json")
    token, _ = registry.create(Role.PRODUCER, "gone", now=time.time())
    assert registry.revoke("gone")
    broker = Broker(broker_config)  # starts with the token already revoked
    await broker.start()
    try:
        await refused(broker, home, token)
    finally:
        await broker.stop()


async def test_revocation_while_the_broker_runs(broker: Broker, home: Path) -> None:
    registry = TokenRegistry(home / "tokens.json")  # like `conveyor token` in another process
    token, _ = registry.create(Role.PRODUCER, "leaky", now=time.time())
    first = await Raw.open(broker.port, home, token=token)  # works before the revoke
    await first.close()
    assert registry.revoke("leaky")
    await refused(broker, home, token)
    # other tokens are untouched
    other = await Raw.open(broker.port, home, token=new_token(home, Role.PRODUCER))
    await other.ping()
    await other.close()


@pytest.mark.parametrize("role", list(Role), ids=str)
async def test_tokens_managed_over_the_protocol(broker: Broker, home: Path, role: Role) -> None:
    admin = await Raw.open(broker.port, home, token=(home / "admin.token").read_text().strip())
    try:
        rid = admin.rid()
        admin.send({"t": "token_create", "rid": rid, "role": role.value, "name": "svc", "ttl": 60})
        created = (await admin.until(rid))[-1]
        assert created["t"] == "ok", created
        token = created["token"]
        assert token.startswith("cvy_")
        assert created["info"]["name"] == "svc" and created["info"]["role"] == role.value

        # the new token works, with exactly its role
        user = await Raw.open(broker.port, home)
        welcome = await user.hello(token)
        assert welcome is not None and welcome["t"] == "welcome" and welcome["role"] == role.value
        probe = F.TOKEN_LIST if role is not Role.ADMIN else F.STATS
        rid = user.rid()
        user.send(minimal_frame(probe, rid))
        reply = (await user.until(rid))[-1]
        assert (reply.get("code") == "forbidden") is (role is not Role.ADMIN)
        await user.close()

        # listed, without the secret or its full hash
        rid = admin.rid()
        admin.send({"t": "token_list", "rid": rid})
        listed = (await admin.until(rid))[-1]
        [svc] = [t for t in listed["tokens"] if t["name"] == "svc"]
        assert svc["role"] == role.value and svc["revoked"] is False
        assert set(svc) == {"name", "role", "created_at", "expires_at", "revoked", "hash_prefix"}
        wire = msgpack.packb(listed)
        assert token.encode() not in wire and token[4:].encode() not in wire
        assert hash_token(token).encode() not in wire

        # revoked over the protocol: the next HELLO fails
        rid = admin.rid()
        admin.send({"t": "token_revoke", "rid": rid, "name": "svc"})
        assert (await admin.until(rid))[-1] == {"t": "ok", "rid": rid, "revoked": "svc"}
        await refused(broker, home, token)
        rid = admin.rid()
        admin.send({"t": "token_revoke", "rid": rid, "name": "never-was"})
        assert (await admin.until(rid))[-1]["code"] == "not_found"
    finally:
        await admin.close()


async def test_client_library_sees_the_same_refusals(broker: Broker, home: Path) -> None:
    worker_token = new_token(home, Role.WORKER)
    c = AsyncClient(broker.url, home=home, token=worker_token, reconnect_timeout=0)
    await c.connect()
    try:
        with pytest.raises(PermissionDenied):
            await c.submit("add", a=1, b=2)
        with pytest.raises(PermissionDenied):
            await c.stats()  # a worker has no business with the broker's numbers
        await c.ping()  # still connected
    finally:
        await c.close()
    TokenRegistry(home / "tokens.json").revoke(
        next(t.name for t in TokenRegistry(home / "tokens.json").list() if t.role is Role.WORKER)
    )
    again = AsyncClient(broker.url, home=home, token=worker_token, reconnect_timeout=0)
    with pytest.raises(AuthenticationError):
        await again.connect()
    assert broker.metrics["auth_failures"] == 1

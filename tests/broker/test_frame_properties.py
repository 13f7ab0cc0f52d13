"""Property tests over the frame schemas, on a live broker: whatever a client sends, no reply
is ever ``internal``, a connection is only closed after a fatal ERROR (or a GOODBYE), and the
broker keeps serving.

Frames are drawn from FRAME_SCHEMAS with field values at the edges that broke brokers
before: integers at the limits of int64/uint64 and of every documented range, booleans
where integers go, NaN and infinities, empty and over-long names, nesting around the
32-level limit, big integers (extension type 1), bytes where text goes, and ids and leases
of jobs the broker really dispatched. Runs are derandomized (no example database), so the
same examples run every time, on a SQLite store (whose int64 columns are one such edge).
"""

from __future__ import annotations

import contextlib
import math
import reprlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.broker.app import Broker
from conveyor.broker.config import BrokerConfig, Limits
from conveyor.protocol.frames import FATAL_CODES, FRAME_SCHEMAS, FrameType
from tests.security.rawconn import Raw

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# -- values at the edges ----------------------------------------------------------------------
EDGE_INTS = [2**64 - 1, -(2**63), 2**63, -(2**63) + 1, -(2**31) - 1, -(2**31), -1, 0, 1, 2]
EDGE_INTS += [5, 10, 11, 32, 33, 100, 101, 200, 201, 1000, 1001, 10_000, 10_001, 86_400]
EDGE_INTS += [2**31 - 1, 2**31, 2**32, 2**53, 2**53 + 1, 10**11, 2**63 - 1]
ints = st.sampled_from(EDGE_INTS) | st.integers(-(2**63), 2**64 - 1)
big_ints = st.sampled_from([2**64, -(2**63) - 1, 10**40, -(10**40)])  # extension type 1
FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 0.0009, 0.001, 0.5, 86400.0]
FLOATS += [86400.5, 604800.0, 31536000.0, 31536000.5, 1e11, 1e11 + 1, 1.8e308, -1.0]
floats = st.sampled_from(FLOATS) | st.floats()
NAMES = ["x" * 101, "", "default", "fz", "fz.t", "a", " ", "a b", "é", "x" * 100, "x" * 200]
HUGE = "x" * 1_048_540  # fits a frame, but an error that repeats it whole would not
NAMES += [HUGE]
NAMES += ["x" * 201, "x" * 5000, "0", "-", "cvy_", "\x00", "a/b", "q:1", "00000000000000000001"]
# not "admin": revoking that token would end the run
names = st.sampled_from(NAMES) | st.text(max_size=12).filter(lambda s: s != "admin")
blobs = st.sampled_from([b"", b"\x92", b"\x92\x90\x80", b"\xc0", b"\xdc\x00\x02\x90\x80"]) | (
    st.binary(max_size=24)
)


def nested(levels: int, leaf: Any = 1, as_map: bool = False) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"k": value} if as_map else [value]
    return value


# sampled_from favours its first elements: the nastiest come first
deep = st.builds(nested, st.sampled_from([1000, 33, 32]), st.just(1), st.booleans())
scalars = st.none() | st.booleans() | ints | big_ints | floats | names | blobs
values = st.recursive(
    scalars | deep,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
GONE = object()  # a mutation that removes the field
edge_values = scalars | deep | values
edges = edge_values | st.just(GONE)  # for a field: a value at an edge, or no field at all


def mostly(good: st.SearchStrategy[Any], one_in: int = 10) -> st.SearchStrategy[Any]:
    """``good``, and one time in ``one_in`` an edge value instead (most often one that breaks
    the frame's schema: bad_frame, and the connection closes)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: edge_values if i == 0 else good)


def mutated(
    base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]], most: int = 2
) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` (valid) with up to ``most`` of ``fields`` set to edge values or removed:
    one bad field at a time is what reaches the check that should refuse it."""
    keys = st.lists(st.sampled_from(sorted(fields)), max_size=most, unique=True)

    def apply(changes: dict[str, Any]) -> dict[str, Any]:
        out = {**base, **changes}
        return {k: v for k, v in out.items() if v is not GONE}

    return keys.flatmap(lambda ks: st.fixed_dictionaries({k: fields[k] for k in ks})).map(apply)


def edge_fields(*names_: str, **special: st.SearchStrategy[Any]) -> dict[str, Any]:
    return {**dict.fromkeys(names_, edges), **{k: v | edges for k, v in special.items()}}


SPEC_FIELDS = edge_fields(
    *("task", "queue", "priority", "retries", "retry_backoff", "retry_backoff_max"),
    *("timeout", "delay", "eta", "unique_key", "concurrency_key", "id", "payload", "x"),
    args=st.lists(values, max_size=3) | deep,
    kwargs=st.dictionaries(names, values, max_size=3) | deep.map(lambda d: {"k": d}),
)
specs = mutated({"task": "fz.x", "queue": "fzq"}, SPEC_FIELDS, most=3)
id_lists = st.lists(names | edge_values, max_size=3)
an_id = st.sampled_from([HUGE, "fz-1", "x" * 101]) | names
PRODUCER: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "submit": mutated(
        {"jobs": [{"task": "fz.x", "queue": "fzq"}]},
        {"jobs": mostly(st.lists(specs, min_size=1, max_size=3))},
        most=1,
    ),
    "get": mutated({"id": "fz-1"}, edge_fields("events", "payload", id=an_id), most=3),
    "wait": mutated({"id": "fz-1", "timeout": 0}, edge_fields("timeout", "events", id=an_id)),
    "cancel": mutated({"id": "fz-1"}, edge_fields(id=an_id)),
    "list": mutated(
        {"state": "queued"}, edge_fields("state", "queue", "task", "limit", "offset", "cursor")
    ),
    "stats": st.just({}),
    "dlq_retry": mutated({"ids": ["fz-1"]}, edge_fields("all", ids=id_lists)),
    "dlq_purge": mutated({"ids": ["fz-1"]}, edge_fields("all", ids=id_lists)),
    "token_create": mutated({"role": "producer"}, edge_fields("role", "ttl", name=an_id), most=3),
    "token_list": st.just({}),
    "token_revoke": mutated({"name": "nobody"}, edge_fields(name=an_id)),
    "queue_pause": mutated({"queue": "fzq"}, edge_fields("queue")),
    "queue_resume": mutated({"queue": "fzq"}, edge_fields("queue")),
    "limits": mutated(  # targets no fuzzed job uses: a limit set here slows nothing else
        {"set": {"task:fz.limited": "5/s"}},
        edge_fields(
            "clear",
            set=st.dictionaries(
                st.sampled_from(["task:fz.limited", "queue:fz-limited", "key:fzk", "x:y"]) | names,
                edge_values | st.sampled_from(["0/s", "-1/s", "abc", "5/x", "1e400", 0, -2]),
                max_size=2,
            ),
        ),
    ),
    "ping": st.just({}),
    "pong": st.just({}),
    "error": mutated({"code": "invalid", "message": "m"}, edge_fields("code", "message", "field")),
}
RIDS = st.sampled_from(EDGE_INTS) | edges  # echoed as given; a non-int is bad_frame


@st.composite
def producer_frames(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(PRODUCER)))
    frame = {"t": kind, **draw(PRODUCER[kind])}
    if kind != "pong" and draw(st.integers(0, 9)) == 0:
        rid = draw(RIDS)
        if rid is not GONE:
            frame["rid"] = rid
    elif "rid" in FRAME_SCHEMAS[FrameType(kind)] or kind == "ping":
        frame["rid"] = 1
    return frame


NOT_TEXT = st.sampled_from([nested(1000), nested(1000, as_map=True), 10**40, b"\x92", None, 0.5])
ERRORS = st.fixed_dictionaries(  # what should be text, often is not
    {"type": NOT_TEXT | names, "message": NOT_TEXT | names}, optional={"traceback": NOT_TEXT}
)
RESULT_FIELDS = edge_fields(
    *("id", "lease", "ok", "retry_delay", "reject"),
    result=values | deep | blobs | st.just(b"\x92" + bytes(600_000)),
    error=ERRORS,
)


@st.composite
def worker_frames(draw: st.DrawFn, leases: dict[str, int]) -> dict[str, Any]:
    held = sorted(leases.items())
    which = draw(st.integers(0, 3))  # not sampled_from(held): its size varies between runs
    run = held[which % len(held)] if held else ("fz-none", 1)
    kind = draw(st.sampled_from(["report", "report", "report", "release", "heartbeat", "drain"]))
    if kind == "report":
        ok = draw(st.booleans())
        base = {"id": run[0], "lease": run[1], "ok": ok}
        if not ok:
            base["error"] = draw(ERRORS)
        results = draw(mostly(st.lists(mutated(base, RESULT_FIELDS), min_size=1, max_size=2)))
        frame: dict[str, Any] = {"results": results}
    elif kind == "release":
        entry = mutated({"id": run[0], "lease": run[1]}, edge_fields("id", "lease"))
        frame = {"jobs": draw(mostly(st.lists(entry, min_size=1, max_size=2)))}
    elif kind == "heartbeat":
        frame = {"running": draw(mostly(st.lists(st.just(run[0]) | edge_values, max_size=3)))}
    else:
        frame = {}
    return {"t": kind, **{k: v for k, v in frame.items() if v is not GONE}}


HELLO = mutated({"v": 1}, edge_fields("v", "token", "name", "agent", "features"), most=3)
READY = mutated(
    {"rid": 1, "tasks": ["fz.t"], "queues": ["fz"], "concurrency": 2},
    edge_fields(
        *("rid", "concurrency", "prefetch", "pool", "host", "pid"),
        tasks=st.lists(names, max_size=3),
        queues=st.lists(names, max_size=3),
        defaults=st.dictionaries(
            names,
            mutated(
                {},
                edge_fields(
                    *("retries", "retry_backoff", "retry_backoff_max", "timeout"),
                    *("rate", "concurrency_limit"),
                ),
            ),
            max_size=2,
        ),
        routes=st.dictionaries(names, names | edge_values, max_size=2),
    ),
    most=3,
)


# -- the live side ----------------------------------------------------------------------------
@contextlib.contextmanager
def production_recursion_limit() -> Iterator[None]:
    """Hypothesis raises the recursion limit while a test runs, which hides what a deeply
    nested value does to a broker under the interpreter's default (1,000)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


class Prober:
    """Connections to the broker that send drawn frames and check every frame that comes back."""

    def __init__(self, broker: Broker, home: Path) -> None:
        self.broker = broker
        self.home = home
        self.leases: dict[str, int] = {}  # jobs the worker connection holds: id -> lease
        self.conns: dict[str, Raw] = {}
        self.frames = 0

    async def conn(self, kind: str) -> Raw:
        raw = self.conns.get(kind)
        if raw is None:
            raw = self.conns[kind] = await Raw.open(self.broker.port, self.home, hello=True)
            if kind == "worker":
                self.leases.clear()  # runs of an earlier connection are stale now
                rid = raw.rid()
                # credit never runs out, even with runs the fuzzer left unreported
                ready = {"tasks": ["fz.t"], "queues": ["fz"], "concurrency": 10_000}
                raw.send({"t": "ready", "rid": rid, **ready})
                self.check(await raw.until(rid))
        return raw

    def check(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            self.frames += 1
            assert not (frame.get("t") == "error" and frame.get("code") == "internal"), frame
            if frame.get("t") == "dispatch":
                for job in frame["jobs"]:
                    self.leases[job["id"]] = job["lease"]

    async def exchange(self, kind: str, frame: dict[str, Any]) -> None:
        """Send ``frame`` and a PING behind it; read up to the PONG (and the reply to the
        frame's rid, unless it is a WAIT that may take long). A closed connection must have
        been closed by a fatal ERROR or a GOODBYE."""
        raw = await self.conn(kind)
        rid = frame.get("rid")
        ftype = FrameType(frame["t"])
        # requests get a reply (a WAIT may take long: not waited for); PING gets its PONG
        answered = ftype is FrameType.PING or (
            FRAME_SCHEMAS[ftype].get("rid", ((), False))[1] and ftype is not FrameType.WAIT
        )
        wait_reply = answered and isinstance(rid, int) and not isinstance(rid, bool)
        with production_recursion_limit():
            await self._exchange(raw, kind, frame, ftype, rid, wait_reply)

    async def _exchange(
        self, raw: Raw, kind: str, frame: dict[str, Any], ftype: FrameType, rid: Any, wait: bool
    ) -> None:
        raw.send(frame)
        ping = 2**64 - 1 - self.frames  # no drawn rid is this one
        raw.send({"t": "ping", "rid": ping})
        got: list[dict[str, Any]] = []
        wanted = {ping, rid} if wait else {ping}
        while wanted:
            reply = await raw.recv(5)
            if reply is None:
                del self.conns[kind]  # first: the next example must not inherit a dead one
                await raw.close()
                last = got[-1] if got else {}
                closed_properly = (
                    last.get("code") in FATAL_CODES
                    or ftype is FrameType.GOODBYE
                    or (ftype is FrameType.ERROR and frame.get("code") in FATAL_CODES)
                )
                assert closed_properly, f"closed without a fatal ERROR after {reprlib.repr(frame)}"
                break
            got.append(reply)
            if reply.get("t") == "error" and reply.get("code") in FATAL_CODES:
                assert await raw.recv(5) is None, "a fatal ERROR but the connection stays"
                del self.conns[kind]
                await raw.close()
                break
            wanted.discard(reply.get("rid"))
        self.check(got)

    async def feed_worker(self) -> None:
        """Jobs for the worker connection, read until the broker has dispatched them, so
        reports and releases name real runs."""
        raw = await self.conn("producer")
        rid = raw.rid()
        raw.send({"t": "submit", "rid": rid, "jobs": [{"task": "fz.t", "queue": "fz"}] * 3})
        self.check(await raw.until(rid))
        worker = await self.conn("worker")
        while len(self.leases) < 2:
            frame = await worker.recv(5)
            assert frame is not None, "the worker connection closed"
            self.check([frame])

    async def still_serves(self) -> None:
        raw = await Raw.open(self.broker.port, self.home, hello=True)
        try:
            rid = raw.rid()
            raw.send({"t": "submit", "rid": rid, "jobs": [{"task": "after", "args": [1]}]})
            (submitted,) = (await raw.until(rid))[-1]["jobs"]
            rid = raw.rid()
            raw.send({"t": "get", "rid": rid, "id": submitted["id"]})
            assert (await raw.until(rid))[-1]["job"]["args"] == [1]
            rid = raw.rid()
            raw.send({"t": "stats", "rid": rid})
            assert (await raw.until(rid))[-1]["t"] == "stats_reply"
        finally:
            await raw.close()

    async def close(self) -> None:
        for raw in self.conns.values():
            await raw.close()
        self.conns.clear()


@pytest.fixture
def broker_config(home: Path, tmp_path: Path) -> BrokerConfig:
    # HELLOs with made-up tokens are part of the search: without the login throttle, or
    # the search's own good logins would be refused once it has tried a few bad ones
    return BrokerConfig(
        port=0,
        store_url=f"sqlite:///{tmp_path / 'fuzz.db'}",
        home=home,
        limits=Limits(login_delay_max=0),
    )


@pytest.fixture
async def prober(broker: Broker, home: Path) -> AsyncIterator[Prober]:
    p = Prober(broker, home)
    yield p
    await p.close()
    await p.still_serves()


@settings(PROPERTY, max_examples=250)
@given(data=st.data())
async def test_producer_and_admin_frames_never_get_internal(
    prober: Prober, data: st.DataObject
) -> None:
    frame = data.draw(producer_frames(), label="frame")
    try:
        await prober.exchange("producer", frame)
    finally:
        await prober.close()  # each example on a fresh connection (the broker stays)


@settings(PROPERTY, max_examples=150)
@given(data=st.data())
async def test_worker_frames_never_get_internal(prober: Prober, data: st.DataObject) -> None:
    """On one worker connection while it lives: results and releases name its real runs."""
    if len(prober.leases) < 2:
        await prober.feed_worker()
    frame = data.draw(worker_frames(prober.leases), label="frame")
    await prober.exchange("worker", frame)
    for key in ("results", "jobs"):
        entries = frame.get(key)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                prober.leases.pop(entry["id"], None)
    if frame["t"] == "drain":  # a draining worker gets no more jobs: start another
        await prober.conns.pop("worker").close()


@settings(PROPERTY, max_examples=80)
@given(data=st.data())
async def test_hello_and_ready_never_get_internal(prober: Prober, data: st.DataObject) -> None:
    """Each on a fresh connection: HELLO is the first frame, READY comes once."""
    raw = await Raw.open(prober.broker.port, prober.home)
    try:
        hello = data.draw(HELLO, label="hello")
        if data.draw(st.booleans(), label="real token"):
            hello["token"] = (prober.home / "admin.token").read_text().strip()
        raw.send({"t": "hello", **hello})
        welcome = await raw.recv()
        assert welcome is not None, "closed without a frame"
        prober.check([welcome])
        if welcome["t"] != "welcome":
            assert welcome.get("code") in FATAL_CODES, welcome
            return
        prober.conns["ready"] = raw
        await prober.exchange("ready", {"t": "ready", **data.draw(READY, label="ready")})
    finally:
        prober.conns.pop("ready", None)
        await raw.close()

"""Pipelined submits: ``Client(pipeline=True)``.

``submit()`` writes its SUBMIT and returns without waiting for the acknowledgement: the
job's id is known already (the client chooses it), but the job is durable only once the
broker acknowledges it. Acknowledgements are collected as they arrive, whenever the
client next touches the connection; at most :data:`WINDOW` submits are unacknowledged at
once (the next one waits for an acknowledgement). The broker stores a burst of them in
one commit instead of one each, which is where the speed comes from.

The guarantees:

* ``flush()`` returns once every submit so far is acknowledged, and raises
  :class:`~conveyor.errors.SubmitFailed` naming each one the broker refused;
* any other request (``result()``, ``get``, ``submit_many`` …) first waits for the
  outstanding acknowledgements, so it sees every job submitted before it;
* ``close()``, and so the end of a ``with`` block, flushes;
* after a lost connection the unacknowledged submits are sent again on the new one
  (the same job ids: the broker keeps one job per id, so none is stored twice);
* a ``submit()`` that raises (the broker gone past ``reconnect_timeout``, say) is not
  sent later: its job is not submitted, unless it reached the broker before the
  connection went (as a submit without ``pipeline`` that raises may have).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from conveyor.client.sync_transport import SyncConnection, SyncTransport
from conveyor.errors import AuthenticationError, BrokerError, ConnectionLost, SubmitFailed
from conveyor.protocol.session import Event, Reply, error_of

Frame = dict[str, Any]

WINDOW = 500
"""Submits unacknowledged at once (at most the broker's ``max_inflight_requests``, 256 by
default): enough for the broker to commit hundreds together, few enough that the unread
acknowledgements never fill the socket buffers."""

ACK_TIMEOUT = 60.0  # seconds without any acknowledgement before the broker counts as lost


class Pipeline:
    """The unacknowledged submits of one Client, and the refusals not yet reported."""

    def __init__(self, transport: SyncTransport, window: int = WINDOW) -> None:
        self._transport = transport
        self._window = window
        self._conn: SyncConnection | None = None  # the connection _unacked were sent on
        self._outbox: deque[Frame] = deque()  # to send (again, after a lost connection)
        self._unacked: dict[int, Frame] = {}  # rid on _conn -> its SUBMIT
        self._failed: list[tuple[str, BrokerError]] = []

    def __len__(self) -> int:
        """Submits not acknowledged yet."""
        return len(self._outbox) + len(self._unacked)

    def submit(self, frame: Frame) -> None:
        """Send a SUBMIT of one job; waits only while the window is full. If this raises,
        the submit is withdrawn: a caller that tries again must not get two jobs."""
        self._outbox.append(frame)
        try:
            self._step(wait=False)
        except BaseException:
            self._withdraw(frame)
            raise

    def _withdraw(self, frame: Frame) -> None:
        if any(f is frame for f in self._outbox):
            self._outbox = deque(f for f in self._outbox if f is not frame)
        for rid in [rid for rid, f in self._unacked.items() if f is frame]:
            del self._unacked[rid]
            if self._conn is not None:
                self._conn.forget([rid])  # its acknowledgement, if one comes, is no one's

    def settle(self) -> None:
        """Wait until every submit is acknowledged (refusals are kept for flush)."""
        while self:
            self._step(wait=True)

    def flush(self) -> None:
        """:meth:`settle`, then raise SubmitFailed for the refused ones (once)."""
        self.settle()
        if self._failed:
            failed, self._failed = self._failed, []
            raise SubmitFailed(failed)

    def _step(self, wait: bool) -> None:
        """Send the outbox and take the acknowledgements that are here (waiting for one
        if ``wait`` or the window is full), over whatever connection works."""
        while True:
            conn = self._transport.connection()
            try:
                if conn is not self._conn:  # a new connection: what the old one left goes again
                    self._outbox.extendleft(reversed(self._unacked.values()))
                    self._unacked.clear()
                    self._conn = conn
                self._send(conn)
                # the broker stops reading a connection past its in-flight limit: stay below
                window = min(self._window, conn.session.limit("max_inflight_requests", 256))
                self._collect(conn, wait or len(self._unacked) >= window)
                return
            except AuthenticationError as exc:
                self._transport.refused(conn, exc)
                raise
            except ConnectionLost as exc:
                self._transport.lost(conn, exc)  # paces the retry; raises once out of time

    def _send(self, conn: SyncConnection) -> None:
        if not self._outbox:
            return
        out = []
        while self._outbox:
            frame = self._outbox.popleft()
            req, data = conn.session.request(frame)
            self._unacked[req.rid] = frame
            out.append(data)
        conn.send(b"".join(out))

    def _collect(self, conn: SyncConnection, wait: bool) -> None:
        def ours(event: Event) -> Reply | None:
            if isinstance(event, Reply) and event.request.rid in self._unacked:
                return event
            return None

        replies = conn.ready(ours)
        if not replies and wait and self._unacked:
            replies = [conn.next_reply(self._unacked, ACK_TIMEOUT)]
        for reply in replies:
            frame = self._unacked.pop(reply.request.rid)
            err = error_of(reply.frame)
            if err is not None:
                self._failed.append((str(frame["jobs"][0]["id"]), err))

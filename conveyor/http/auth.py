"""Bearer tokens on HTTP, with the same roles as on the socket.

``Authorization: Bearer cvy_…`` on every request but ``/health``, the dashboard's static
files and the API description. No cookies: a state-changing request must carry the header,
which a page on another origin cannot make the browser send (so no CSRF); and no CORS
headers are ever sent, so other origins cannot read the answers either.

===========  ===========================================================
producer     read (jobs, stats, workers, queues, tasks, events), submit, cancel
worker       nothing (workers speak the protocol)
admin        everything: also the dead-letter queue, queue pause/resume, metrics, security
===========  ===========================================================
"""

from __future__ import annotations

import enum

from conveyor.broker.core import BrokerCore
from conveyor.http.errors import HttpError
from conveyor.security.tokens import Role, TokenInfo


class Action(enum.StrEnum):
    READ = "read"
    SUBMIT = "submit"
    CANCEL = "cancel"
    ADMIN = "admin"


POLICY: dict[Role, frozenset[Action]] = {
    Role.PRODUCER: frozenset({Action.READ, Action.SUBMIT, Action.CANCEL}),
    Role.WORKER: frozenset(),
    Role.ADMIN: frozenset(Action),
}


def authorize(core: BrokerCore, header: str | None, action: Action) -> TokenInfo:
    """The token's info if it may do ``action``; else HttpError 401 or 403."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HttpError(401, "unauthorized", "give a token: Authorization: Bearer cvy_...")
    info = core.authenticate(token.strip())
    if info is None:
        core.metrics["http_auth_failures"] += 1
        raise HttpError(401, "unauthorized", "unknown, revoked or expired token")
    if action not in POLICY.get(info.role, frozenset()):
        core.metrics["forbidden"] += 1
        raise HttpError(403, "forbidden", f"role {info.role.value} may not {action.value} here")
    return info

"""Bearer tokens on HTTP, with the same roles as on the socket.

``Authorization: Bearer cvy_…`` on every request but ``/health``, the dashboard's static
files and the API description. No cookies: a state-changing request must carry the header,
which a page on another origin cannot make the browser send (so no CSRF); and no CORS
headers are ever sent, so other origins cannot read the answers either.

===========  ===========================================================
producer     read (jobs, stats, workers, queues, tasks, events), submit, cancel
worker       nothing (workers speak the protocol)
admin        everything: also the dead-letter queue, queue pause/resume, limits, metrics,
             security
===========  ===========================================================

Bad tokens count against their source address, as on the socket (one throttle for both,
:mod:`conveyor.broker.logins`): a throttled address gets ``429 too_many_failures`` with
``Retry-After`` and its token is not even checked.
"""

from __future__ import annotations

import enum
import math

from conveyor.broker.core import BrokerCore
from conveyor.errors import AuthenticationError, TooManyFailures
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


def authorize(core: BrokerCore, header: str | None, action: Action, address: str = "") -> TokenInfo:
    """The token's info if it may do ``action``; else HttpError 401 or 403, or 429 (with
    ``Retry-After``) while ``address`` is throttled for too many bad tokens."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # no token at all (a dashboard before its login, say) is not a guess: not counted
        raise HttpError(401, "unauthorized", "give a token: Authorization: Bearer cvy_...")
    peer = address or "an unknown address"
    try:
        info = core.logins.login(token.strip(), address, peer=peer, http=True)
    except TooManyFailures as exc:
        seconds = str(max(1, math.ceil(exc.retry_after)))
        raise HttpError(429, exc.code, exc.message, headers={"Retry-After": seconds}) from None
    except AuthenticationError as exc:
        raise HttpError(401, exc.code, exc.message) from None
    if action not in POLICY.get(info.role, frozenset()):
        core.metrics["forbidden"] += 1
        raise HttpError(403, "forbidden", f"role {info.role.value} may not {action.value} here")
    return info

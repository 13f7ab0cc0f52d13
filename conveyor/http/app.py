"""The ASGI application: the API routes, the dashboard, the offline API docs, and the
headers that keep a browser from mixing the broker's pages with anyone else's."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.http import api, schedules_api, workflows
from conveyor.http.errors import HANDLERS, error_body

STATIC = files("conveyor.http") / "static"
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    ),
]

DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Conveyor API</title>
<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css"></head>
<body><div id="docs"></div>
<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script></body></html>"""


class Guard:
    """ASGI middleware: security headers on every answer, and a cap on request bodies
    (413 before the body is read into memory)."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _too_large(send, self.max_body)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        try:
            await self.app(scope, limited, with_headers)
        except _BodyTooLarge:
            await _too_large(send, self.max_body)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    import json

    body = json.dumps(
        error_body("invalid", f"the request body is over {limit} bytes", "body")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), *_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create(ctx: api.Context) -> ASGIApp:
    """The whole HTTP face of one broker."""
    app = FastAPI(
        title="Conveyor",
        version=ctx.version,
        description="The broker's REST API. Every route but /health needs "
        "`Authorization: Bearer <token>`; roles as on the socket (producer: read, submit, "
        'cancel; admin: everything). Errors: `{"error": {"code", "message", "field"?}}`.',
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    app.state.conveyor = ctx
    app.include_router(api.router)
    app.include_router(schedules_api.router)
    app.include_router(workflows.router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text("utf-8"))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS)

    max_body = ctx.core.config.limits.max_payload * 2 + 64 * 1024  # JSON of a full payload
    guarded: Any = Guard(app, max_body)
    return guarded  # type: ignore[no-any-return]

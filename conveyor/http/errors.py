"""Errors as JSON: ``{"error": {"code", "message", "field"?}}`` with the right status.

The codes are the protocol's (docs/protocol.md, section 11); the statuses follow HTTP:
400 a body that is not the JSON asked for, 401 no valid token, 403 the role may not,
404 no such job, 409 the job's state forbids it, 413 a body or payload too large,
422 a field that breaks a rule (``field`` names it), 429 slow down, 503 the store cannot
write now (disk full, ...).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.errors import BrokerError
from conveyor.limits import MAX_ERROR_REPLY

STATUS = {
    "invalid": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "too_many_failures": 429,
    "queue_full": 429,
    "store_unavailable": 503,
}


class HttpError(Exception):
    """Raised by routes; rendered as the JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    if len(message) > MAX_ERROR_REPLY:  # as on the socket: never the whole input back
        message = message[:MAX_ERROR_REPLY] + "..."
    error: dict[str, Any] = {**extra, "code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def _response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, field, **extra), status_code=status, headers=headers
    )


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpError)
    return _response(exc.status, exc.code, exc.message, exc.field, exc.headers)


async def on_broker_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BrokerError)
    status = STATUS.get(exc.code, 500)
    if exc.code == "invalid" and exc.field == "payload" and "limit" in exc.message:
        status = 413
    return _response(status, exc.code, exc.message, exc.field, **exc.details())


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own checks (types, required fields, JSON): name the first bad field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = location[0] if location else None
    kind = str(first.get("type", ""))
    message = str(first.get("msg", "invalid request"))
    if kind in ("json_invalid", "model_attributes_type", "dict_type") and field is None:
        return _response(400, "bad_request", f"the body must be a JSON object: {message}")
    where = ".".join(location) or "request"
    return _response(422, "invalid", f"{where}: {message}", field)


async def on_starlette_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _response(exc.status_code, code, str(exc.detail))


HANDLERS = {
    HttpError: on_http_error,
    BrokerError: on_broker_error,
    RequestValidationError: on_validation_error,
    StarletteHTTPException: on_starlette_error,
}

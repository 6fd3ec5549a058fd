"""The one place where an exception becomes an HTTP status and a JSON error body.

Handlers raise; they never build error responses themselves.  Every error body has the
same shape, ``{"error": message, "field": name-or-null}``, so a page can show the message
and point at the form field it names.
"""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from sipgw.calls import CallError
from sipgw.policy import Denied

INTERNAL_ERROR = "internal server error"


class ApiError(Exception):
    """A request the REST layer refuses with ``code``; ``message`` goes to the client as is."""

    def __init__(self, code: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class BadRequest(ApiError):
    """400: the body is malformed or ``field`` is missing or invalid."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(400, message, field)


class NotFound(ApiError):
    """404: nothing matches."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(404, message, field)


class Conflict(ApiError):
    """409: the name or id is already in use."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(409, message, field)


def error_body(message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": message, "field": field}


def error_response(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Map ``exc`` to ``(status, body)``; anything unexpected is a 500 that says nothing more.

    The caller logs the 500 case with its traceback; the traceback never goes into the body.
    """
    if isinstance(exc, (ApiError, Denied)):  # Denied: egress 403, quota 429
        return exc.code, error_body(exc.message, exc.field)
    if isinstance(exc, CallError):
        code = exc.code
        message = str(exc) or _phrase(code)
        return code, error_body(message)
    return 500, error_body(INTERNAL_ERROR)


def write_error(request, exc: BaseException) -> bytes:
    """``exc`` as the answer to ``request`` (a twisted.web request): its status, the JSON
    error body (returned) and its Content-Length."""
    code, body = error_response(exc)
    payload = json.dumps(body).encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(payload))
    return payload


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "error"

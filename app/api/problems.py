"""problem+json (RFC 9457) for every error: platform errors, FastAPI's validation errors,
unknown routes, wrong methods and anything unexpected (which never leaks internals)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import PlatformError
from app.observability.logging import request_id_var

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://agent-platform.dev/problems/"
logger = logging.getLogger(__name__)


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ProblemResponse:
    """A problem+json response; `extra` adds members (RFC 9457 extensions)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id_var.get(),
    }
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return ProblemResponse(body, status_code=status, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        errors.append(
            {
                "field": ".".join(location[1:]) if len(location) > 1 else ".".join(location),
                "location": location[0] if location else "body",
                "message": error.get("msg", "invalid"),
                "type": error.get("type", "invalid"),
            }
        )
    return errors


async def _platform_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, PlatformError)
    return problem(
        exc.status_code,
        exc.code,
        exc.title,
        exc.detail,
        instance=request.url.path,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    malformed = any(error["type"] == "json_invalid" for error in errors)
    return problem(
        400 if malformed else 422,
        "malformed-json" if malformed else "validation-error",
        "Malformed JSON" if malformed else "Invalid request",
        "The request body is not valid JSON."
        if malformed
        else "; ".join(f"{e['field'] or e['location']}: {e['message']}" for e in errors[:5]),
        instance=request.url.path,
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {
        404: ("not-found", "Not found"),
        405: ("method-not-allowed", "Method not allowed"),
        413: ("payload-too-large", "Request body too large"),
    }
    code, title = codes.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route for {request.method} {request.url.path}"
    return problem(
        exc.status_code,
        code,
        title,
        detail,
        instance=request.url.path,
        headers=dict(exc.headers or {}),
    )


async def _database_unavailable(request: Request, exc: Exception) -> ProblemResponse:
    logger.warning("database unavailable: %r", exc)
    return problem(
        503,
        "database-unavailable",
        "Service unavailable",
        "the database cannot be reached right now; retry shortly",
        instance=request.url.path,
        headers={"Retry-After": "2"},
    )


def _is_connection_failure(exc: BaseException) -> bool:
    """A failure to reach the database (refused, dropped, timed out), not a bad query."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, OSError | TimeoutError | asyncpg.exceptions.ConnectionDoesNotExistError
        ):
            return True
        if isinstance(
            current,
            asyncpg.exceptions.CannotConnectNowError | asyncpg.exceptions.TooManyConnectionsError,
        ):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


async def _infrastructure_error(request: Request, exc: Exception) -> ProblemResponse:
    """Errors of the layers below (database driver, sockets): 503 when the database cannot be
    reached, else the generic 500."""
    if _is_connection_failure(exc):
        return await _database_unavailable(request, exc)
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> ProblemResponse:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return problem(
        500,
        "internal-error",
        "Internal error",
        "An unexpected error occurred; quote the request_id when reporting it.",
        instance=request.url.path,
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PlatformError, _platform_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for infrastructure in (OSError, TimeoutError, DBAPIError, asyncpg.exceptions.PostgresError):
        app.add_exception_handler(infrastructure, _infrastructure_error)
    app.add_exception_handler(Exception, _unexpected_error)

"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs throughput and breaks streaming).

`RequestContextMiddleware` accepts or generates `X-Request-ID`, echoes it, records HTTP
metrics by route template, and enforces the body size limit: a declared `Content-Length`
over the limit is refused before the body is read, and a streamed body is cut off with 413
as soon as it passes the limit.
"""

from __future__ import annotations

import functools
import os
import re
import time

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem
from app.observability import metrics
from app.observability.logging import request_id_var

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` mid-body. An HTTPException so FastAPI's body parsing re-raises it
    (it turns other errors into a 400) and the problem handler renders the 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request bodies are limited to {limit} bytes")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied, declared = "", None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                supplied = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
        request_id = supplied if _REQUEST_ID.match(supplied) else os.urandom(16).hex()
        request_id_header = (b"x-request-id", request_id.encode("latin-1"))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(scope, receive, send_with_id)
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise _BodyTooLarge(self.max_body_bytes)
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except _BodyTooLarge:
                if response_started:
                    raise
                await self._too_large(scope, receive, send_with_id)
        finally:
            _observe(_route_template(scope), scope["method"], status, started)
            request_id_var.reset(token)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "payload-too-large",
            "Request body too large",
            f"request bodies are limited to {self.max_body_bytes} bytes",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)


@functools.lru_cache(maxsize=1024)
def _metrics_of(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    """The labelled children for one (route, method, status): `labels()` costs a lock and
    a validation per call; routes and status codes are few."""
    return (
        metrics.HTTP_REQUESTS.labels(route, method, str(status)),
        metrics.HTTP_REQUEST_SECONDS.labels(route, method),
    )


def _observe(route: str, method: str, status: int, started: float) -> None:
    requests, seconds = _metrics_of(route, method, status)
    requests.inc()
    seconds.observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label), or `unmatched`."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    app = scope.get("app")
    router = getattr(app, "router", None)
    for candidate in getattr(router, "routes", []):
        path = getattr(candidate, "path", None)
        if path is None:
            continue
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(path)
    return "unmatched"

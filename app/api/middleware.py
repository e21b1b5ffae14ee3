"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs throughput and breaks streaming).

`RequestContextMiddleware` accepts or generates `X-Request-ID`, echoes it, records HTTP
metrics by route template, and enforces the body size limit: a declared `Content-Length`
over the limit is refused before the body is read, and a streamed body is cut off with 413
as soon as it passes the limit.
"""

from __future__ import annotations

import re
import time
import uuid

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
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(scope, receive, send_with_id)
                return
            received = 0
            response_started = False

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise _BodyTooLarge(self.max_body_bytes)
                return message

            async def tracking_send(message: Message) -> None:
                nonlocal response_started
                if message["type"] == "http.response.start":
                    response_started = True
                await send_with_id(message)

            try:
                await self.app(scope, limited_receive, tracking_send)
            except _BodyTooLarge:
                if response_started:
                    raise
                await self._too_large(scope, receive, send_with_id)
        finally:
            route = _route_template(scope)
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(route, method, str(status_holder["status"])).inc()
            metrics.HTTP_REQUEST_SECONDS.labels(route, method).observe(
                time.perf_counter() - started
            )
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

"""One error base that knows its HTTP status; `app.api.problems` renders it as problem+json.

Services raise these; routes never build error responses by hand. Signals inside the agent
loop (a gate firing, a lease lost) are not errors and do not live here.
"""

from __future__ import annotations

from typing import Any


class PlatformError(Exception):
    """An error a caller can act on. `code` is a stable slug; it becomes the problem `type`."""

    status_code: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class Unauthorized(PlatformError):
    status_code, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class Forbidden(PlatformError):
    status_code, code, title = 403, "forbidden", "Not allowed"


class NotFound(PlatformError):
    status_code, code, title = 404, "not-found", "Not found"


class Conflict(PlatformError):
    status_code, code, title = 409, "conflict", "Conflict"


class Gone(PlatformError):
    status_code, code, title = 410, "gone", "Gone"


class PayloadTooLarge(PlatformError):
    status_code, code, title = 413, "payload-too-large", "Request body too large"


class ValidationFailed(PlatformError):
    status_code, code, title = 422, "validation-error", "Invalid request"


class RateLimited(PlatformError):
    status_code, code, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(PlatformError):
    status_code, code, title = 503, "unavailable", "Service unavailable"

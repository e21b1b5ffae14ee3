"""The API's wire vocabulary: ids, the error shape and its types, server-sent events."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Mapping
from typing import Any

_ALPHABET = string.ascii_letters + string.digits
_random = random.Random()  # ids must be unique, not unguessable: a fast PRNG will do

# The `error.type` the API sends with each status.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "This request would exceed your organization's rate limit.",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out.",
    "overloaded_error": "Overloaded",
}


def new_id(prefix: str, length: int = 22) -> str:
    return prefix + "".join(_random.choices(_ALPHABET, k=length))


def new_request_id() -> str:
    return new_id("req_011C", 20)


def new_message_id() -> str:
    return new_id("msg_01")


def new_tool_use_id() -> str:
    return new_id("toolu_01")


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error answer the fake sends as `{"type": "error", "error": {...}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for(status)
        self.headers = dict(headers or {})


def invalid(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


def error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"

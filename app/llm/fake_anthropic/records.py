"""What the fake saw: one record per HTTP request, for tests to read back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RecordedRequest:
    """One request as it arrived. `body` is the parsed JSON (None when it was not JSON);
    `status` is the status code the fake answered with (set once it is decided)."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any
    request_id: str
    status: int | None = None

    @property
    def model(self) -> str | None:
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else None

    @property
    def streamed(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def messages(self) -> list[Any]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "request_id": self.request_id,
            "status": self.status,
            "model": self.model,
            "streamed": self.streamed,
        }

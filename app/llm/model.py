"""The model interface: Anthropic Messages-shaped requests and responses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ContentBlock = dict[str, Any]  # {"type": "text"|"tool_use"|"tool_result", ...}
Message = dict[str, Any]  # {"role": "user"|"assistant", "content": [ContentBlock, ...]}


DeltaSink = Callable[[int, str], None]  # (content block index, text) as it is written


@dataclass(frozen=True)
class ModelRequest:
    model: str
    system: str
    messages: list[Message]
    tools: list[dict[str, Any]]
    max_tokens: int
    session_input: Any = None
    assistant_turns: int = 0  # assistant messages so far in the whole conversation
    # What the gateway needs beyond the Messages body.
    tenant_id: str = ""
    session_id: str = ""
    fallback_models: tuple[str, ...] = ()
    cache_responses: bool = False
    prompt_caching: bool = False
    deadline_at: datetime | None = None  # retries never wait past it
    # "cheap": a summary or compaction — the gateway routes it to the cheaper tier first.
    tier: Literal["default", "cheap"] = "default"
    on_delta: DeltaSink | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_json(self) -> dict[str, int]:
        data = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cache_creation_input_tokens:
            data["cache_creation_input_tokens"] = self.cache_creation_input_tokens
        if self.cache_read_input_tokens:
            data["cache_read_input_tokens"] = self.cache_read_input_tokens
        return data


@dataclass(frozen=True)
class ModelResponse:
    content: list[ContentBlock]
    stop_reason: (
        str  # end_turn | tool_use | max_tokens | stop_sequence | pause_turn | refusal | ...
    )
    usage: TokenUsage = field(default_factory=TokenUsage)
    model: str = ""
    confidence: float | None = None  # stated by the offline script (for confidence gates)
    cached: bool = False  # served from the gateway's response cache (cost 0)
    ttft_ms: float | None = None  # time to the first streamed content delta

    @property
    def tool_uses(self) -> list[ContentBlock]:
        return [block for block in self.content if block.get("type") == "tool_use"]

    @property
    def text(self) -> str:
        return "".join(
            block.get("text", "") for block in self.content if block.get("type") == "text"
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "content": self.content,
            "stop_reason": self.stop_reason,
            "model": self.model,
            "usage": self.usage.to_json(),
        }
        if self.cached:
            data["cached"] = True
        if self.confidence is not None:
            data["confidence"] = self.confidence
        return data


class Model(Protocol):
    """Anything that answers a ModelRequest. Implementations: OfflineModel, FunctionModel
    (tests), the Anthropic provider (gateway issue)."""

    async def complete(self, request: ModelRequest) -> ModelResponse: ...


class ModelUnavailable(Exception):
    """No provider can serve the requested model (configuration, not a transient failure)."""


class ModelCallFailed(Exception):
    """No model of the chain answered. `transient`: worth trying again later (overload,
    outage, open circuits, budget check unavailable); otherwise the request itself is bad."""

    def __init__(self, code: str, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient

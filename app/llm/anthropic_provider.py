"""The `anthropic` provider: one streamed Messages call through the official SDK.

Pinned to `anthropic` 2.14 (it authenticates with `Authorization: Bearer` and sends
`anthropic-version: 2026-10-21`). The SDK's own retries are off (`max_retries=0`): the
gateway owns retries, so the two layers never multiply. Every call streams
(`messages.stream`); text deltas go to the request's `on_delta` as they arrive, and the
complete message is what the runtime stores. Errors propagate as the SDK raised them; the
gateway classifies them (`classify`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2

from app.llm.model import ModelRequest, ModelResponse, TokenUsage
from app.settings import AnthropicSettings

PROVIDER = "anthropic"
CACHE_CONTROL = {"type": "ephemeral"}
# Error types a stream's `error` event carries that say the provider is unhealthy.
TRANSIENT_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "timeout_error"})


def make_client(settings: AnthropicSettings) -> anthropic.AsyncAnthropic:
    """Key and base URL from settings, else the SDK's own `ANTHROPIC_API_KEY` /
    `ANTHROPIC_BASE_URL` (the SDK reads them itself when we pass None)."""
    return anthropic.AsyncAnthropic(
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        base_url=settings.base_url,
        max_retries=0,
        timeout=anthropic.Timeout(
            settings.timeout_seconds, connect=settings.connect_timeout_seconds
        ),
    )


@dataclass(frozen=True)
class Failure:
    """How the gateway should treat an error from a provider call."""

    retryable: bool  # worth trying again (same model, after a back-off)
    health: bool  # says something about the provider's health (counts for the breaker)
    retry_after: float | None = None  # seconds the provider asked us to wait
    status: int | None = None


def classify(exc: BaseException) -> Failure:
    """408/409/429/5xx/529 and connection errors are retried; only 5xx, 529, timeouts and
    connection errors count against the breaker (a 400 is our fault, a 429 a back-off)."""
    if isinstance(exc, anthropic.APIConnectionError):  # includes APITimeoutError
        return Failure(retryable=True, health=True)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        retry_after = _retry_after(exc)
        if status == 200:  # an `error` event in the middle of a stream
            error_type = _error_type(exc.body)
            transient = error_type in TRANSIENT_ERROR_TYPES
            return Failure(retryable=transient, health=transient, status=529)
        if status >= 500:
            return Failure(retryable=True, health=True, retry_after=retry_after, status=status)
        if status in (408, 409, 429):
            return Failure(retryable=True, health=False, retry_after=retry_after, status=status)
        return Failure(retryable=False, health=False, status=status)
    if isinstance(exc, TimeoutError | httpx2.TransportError):
        # A connection cut in the middle of a stream reaches us as the transport's own error.
        return Failure(retryable=True, health=True)
    return Failure(retryable=False, health=False)


def _retry_after(exc: anthropic.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            continue
    return None


def _error_type(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            error_type = error.get("type")
            return error_type if isinstance(error_type, str) else None
    return None


def _block(block: Any) -> dict[str, Any]:
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    data: dict[str, Any] = block.model_dump(mode="json", exclude_none=True)
    return data


def request_params(request: ModelRequest, model: str) -> dict[str, Any]:
    """The Messages API body for `request` on `model` (prompt caching marks the system
    prompt and the last tool, so the cached prefix is system + tools)."""
    system: Any = request.system
    tools = list(request.tools)
    if request.prompt_caching:
        system = [{"type": "text", "text": request.system, "cache_control": CACHE_CONTROL}]
        if tools:
            tools[-1] = {**tools[-1], "cache_control": CACHE_CONTROL}
    params: dict[str, Any] = {
        "model": model,
        "system": system,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
    }
    if tools:
        params["tools"] = tools
    return params


@dataclass
class CallProgress:
    first_byte_at: float | None = None  # perf_counter of the first content delta
    passed_on: bool = False  # some text already reached followers: no silent fail-over


class AnthropicModel:
    """One model call = one streamed request. `first_byte_sent` tells the gateway whether a
    failure happened after text reached followers (then it must not fail over)."""

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self.client = client

    async def aclose(self) -> None:
        await self.client.close()

    async def call(
        self, request: ModelRequest, model: str, progress: CallProgress
    ) -> ModelResponse:
        started = time.perf_counter()
        async with self.client.messages.stream(**request_params(request, model)) as stream:
            async for event in stream:
                if event.type != "content_block_delta":
                    continue
                if progress.first_byte_at is None:
                    progress.first_byte_at = time.perf_counter()
                if event.delta.type == "text_delta" and request.on_delta is not None:
                    progress.passed_on = True
                    request.on_delta(event.index, event.delta.text)
            message = await stream.get_final_message()
        usage = message.usage
        return ModelResponse(
            content=[_block(block) for block in message.content],
            stop_reason=message.stop_reason or "end_turn",
            usage=TokenUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
                cache_read_input_tokens=usage.cache_read_input_tokens or 0,
            ),
            model=message.model or model,
            ttft_ms=(
                None
                if progress.first_byte_at is None
                else round((progress.first_byte_at - started) * 1000, 2)
            ),
        )

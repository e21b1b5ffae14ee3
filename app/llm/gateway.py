"""The LLM gateway: every provider call of the runtime goes through `ProviderGateway`.

For one request it: answers from the response cache when the agent opted in (a hit costs
nothing); reserves the tenant's daily budget; walks the fallback chain — the agent's model,
then `fallback_models` — and for each model asks the circuit breaker (state in Redis,
shared by every worker) for a permit, calls the provider, and retries transient failures
(408/409/429/5xx/529, connection errors) with exponential back-off and jitter, waiting as
long as `retry-after` says, never past the session's deadline. A stream that has already
passed text on to followers is never silently retried or failed over. Finally it settles
the budget with the real usage and counts tokens and cost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from app.llm.anthropic_provider import PROVIDER, CallProgress, Failure, classify
from app.llm.budget import BudgetUnavailable, TenantBudgets, estimate_input_tokens
from app.llm.cache import ResponseCache
from app.llm.model import ModelCallFailed, ModelRequest, ModelResponse, TokenUsage
from app.llm.pricing import PriceTable
from app.observability import metrics

logger = logging.getLogger(__name__)


class ProviderCall(Protocol):
    async def call(
        self, request: ModelRequest, model: str, progress: CallProgress
    ) -> ModelResponse: ...

    async def aclose(self) -> None: ...


class Breaker(Protocol):
    """The circuit breaker as the gateway uses it (app/llm/breaker.py)."""

    async def acquire(self, key: str) -> Any: ...  # raises CircuitOpen
    async def record_success(self, permit: Any) -> None: ...
    async def record_failure(self, permit: Any) -> None: ...
    async def release(self, permit: Any) -> None: ...
    async def flush(self) -> None: ...  # wait for reports sent in the background


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_seconds: float = 1.0
    max_seconds: float = 30.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter over base·2^attempt (capped); a provider's retry-after wins."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.max_seconds, self.base_seconds * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)


class _TryNextModel(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderGateway:
    def __init__(
        self,
        provider: ProviderCall,
        *,
        breaker: Breaker,
        circuit_open: type[Exception],
        cache: ResponseCache,
        budgets: TenantBudgets,
        prices: PriceTable,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        cheap_model: str | None = None,
    ) -> None:
        self.cheap_model = cheap_model
        self.provider = provider
        self.breaker = breaker
        self.circuit_open = circuit_open
        self.cache = cache
        self.budgets = budgets
        self.prices = prices
        self.retry = retry
        self.sleep = sleep

    async def aclose(self) -> None:
        await self.breaker.flush()
        await self.provider.aclose()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        cacheable = self.cache.applies(request)
        if cacheable:
            hit = await self.cache.get(request)
            if hit is not None:
                metrics.LLM_CALLS.labels(PROVIDER, hit.model, "cache_hit").inc()
                return hit
        reservation = None
        if self.budgets.enabled:
            input_tokens = estimate_input_tokens(request)
            price = self.prices.price(request.model)
            cost = (input_tokens * price.input + request.max_tokens * price.output) / Decimal(
                1_000_000
            )
            try:
                reservation = await self.budgets.reserve(
                    request.tenant_id, input_tokens + request.max_tokens, cost
                )
            except BudgetUnavailable as exc:
                raise ModelCallFailed("budget_unavailable", str(exc), transient=True) from exc
        response: ModelResponse | None = None
        try:
            response = await self._through_chain(request)
        finally:
            usage = response.usage if response is not None else TokenUsage()
            model = response.model if response is not None else request.model
            try:
                await self.budgets.settle(
                    reservation,
                    usage.total + usage.cache_creation_input_tokens + usage.cache_read_input_tokens,
                    self.prices.cost(model, usage),
                )
            except Exception as exc:
                logger.warning("could not settle a budget reservation: %r", exc)
        assert response is not None  # the chain either answered or raised
        self._count(response)
        if cacheable:
            await self.cache.put(request, response)
        return response

    async def _through_chain(self, request: ModelRequest) -> ModelResponse:
        chain = [request.model, *request.fallback_models]
        if request.tier == "cheap" and self.cheap_model:
            chain.insert(0, self.cheap_model)
        chain = list(dict.fromkeys(chain))  # each model once, in order
        reasons: list[str] = []
        for index, model in enumerate(chain):
            try:
                return await self._with_retries(request, model)
            except _TryNextModel as exc:
                reasons.append(f"{model}: {exc.reason}")
                if index + 1 < len(chain):
                    metrics.LLM_FALLBACKS.labels(model, chain[index + 1]).inc()
                    logger.warning("model %s unavailable (%s); falling back", model, exc.reason)
        raise ModelCallFailed(
            "model_unavailable", "no model answered: " + "; ".join(reasons), transient=True
        )

    async def _with_retries(self, request: ModelRequest, model: str) -> ModelResponse:
        key = f"{PROVIDER}:{model}"
        attempt = 0
        while True:
            try:
                permit = await self.breaker.acquire(key)
            except self.circuit_open as exc:
                metrics.LLM_CALLS.labels(PROVIDER, model, "circuit_open").inc()
                raise _TryNextModel(f"circuit open ({exc})") from exc
            progress = CallProgress()
            started = time.perf_counter()
            try:
                response = await self.provider.call(request, model, progress)
            except asyncio.CancelledError:
                await asyncio.shield(
                    self.breaker.release(permit)
                )  # a cancelled probe frees its slot
                raise
            except Exception as exc:
                failure = classify(exc)
                await self._report(permit, failure)
                metrics.LLM_CALLS.labels(PROVIDER, model, "error").inc()
                if progress.passed_on:
                    raise ModelCallFailed(
                        "model_stream_interrupted",
                        f"{model} failed after streaming part of its answer: {exc}",
                        transient=failure.retryable,
                    ) from exc
                if not failure.retryable:
                    raise ModelCallFailed(
                        "model_request_rejected", f"{model} refused the request: {exc}",
                        transient=False,
                    ) from exc  # fmt: skip
                if attempt >= self.retry.max_retries:
                    raise _TryNextModel(
                        f"{exc.__class__.__name__} after {attempt + 1} tries"
                    ) from exc
                delay = self.retry.backoff(attempt, failure.retry_after)
                if request.deadline_at is not None and (
                    datetime.now(UTC).timestamp() + delay >= request.deadline_at.timestamp()
                ):
                    raise _TryNextModel("the session deadline leaves no time to retry") from exc
                metrics.LLM_RETRIES.labels(model, str(failure.status or "connection")).inc()
                logger.info("model %s: %r; retry %d in %.2fs", model, exc, attempt + 1, delay)
                await self.sleep(delay)
                attempt += 1
                continue
            await self.breaker.record_success(permit)
            elapsed = time.perf_counter() - started
            metrics.LLM_CALL_SECONDS.labels(PROVIDER, model).observe(elapsed)
            if response.ttft_ms is not None:
                metrics.LLM_TTFT_SECONDS.labels(PROVIDER, model).observe(response.ttft_ms / 1000)
            metrics.LLM_CALLS.labels(PROVIDER, model, "ok").inc()
            return response

    async def _report(self, permit: Any, failure: Failure) -> None:
        if failure.health:
            await self.breaker.record_failure(permit)
        else:
            await self.breaker.release(permit)

    def _count(self, response: ModelResponse) -> None:
        usage, model = response.usage, response.model
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_write", usage.cache_creation_input_tokens),
            ("cache_read", usage.cache_read_input_tokens),
        ):
            if count:
                metrics.LLM_TOKENS.labels(model, kind).inc(count)
        metrics.LLM_COST_USD.labels(model).inc(float(self.prices.cost(model, usage)))

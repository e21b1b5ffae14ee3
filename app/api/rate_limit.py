"""Per-tenant and per-subject rate limits with the `limits` library's moving window.

The moving window counts every request in the trailing window, so there is no 2x burst at
a window edge. Counters live in Redis so every API process shares them.

Declared behaviour when Redis fails or stalls: the check falls back to an in-process moving
window with the same limits (each process then enforces the limit on its own share of the
traffic), the fallback is counted in `agent_redis_fallback_total{feature="rate_limit"}`, and
Redis is retried after `REDIS_RETRY_AFTER_FAILURE_SECONDS`. A request is never failed or
held up by Redis being down: the check is bounded by the Redis socket timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from app.errors import RateLimited
from app.observability import metrics
from app.redis_client import RedisHealth
from app.settings import RateLimitSettings, RedisSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitState:
    """What the `RateLimit-*` headers report: the tightest of the limits checked."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


class RateLimiter:
    def __init__(
        self, settings: RateLimitSettings, redis_settings: RedisSettings, redis_url: str
    ) -> None:
        self.enabled = settings.enabled
        self.per_tenant: RateLimitItem = parse(settings.per_tenant)
        self.per_subject: RateLimitItem = parse(settings.per_subject)
        self._timeout = redis_settings.socket_timeout_seconds * 2
        self._health = RedisHealth(redis_settings.retry_after_failure_seconds)
        self._redis = MovingWindowRateLimiter(
            RedisStorage(
                _limits_uri(redis_url),
                implementation="redispy",
                key_prefix="agent:rl",
                socket_timeout=redis_settings.socket_timeout_seconds,
                socket_connect_timeout=redis_settings.connect_timeout_seconds,
            )
        )
        self._memory = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, tenant: str, subject: str) -> LimitState:
        """Count one request against both limits; raise RateLimited if either is spent."""
        checks = (
            ("tenant", self.per_tenant, ("tenant", tenant)),
            ("subject", self.per_subject, ("subject", tenant, subject)),
        )
        tightest: LimitState | None = None
        for name, item, identifiers in checks:
            allowed, state = await self._hit(item, identifiers)
            if not allowed:
                metrics.RATE_LIMITED.labels(limit=name).inc()
                raise RateLimited(
                    f"rate limit exceeded ({name}: {item.amount} per {_window_text(item)})",
                    headers={**state.headers(), "Retry-After": str(max(1, state.reset_seconds))},
                )
            if tightest is None or state.remaining < tightest.remaining:
                tightest = state
        assert tightest is not None
        return tightest

    async def _hit(
        self, item: RateLimitItem, identifiers: tuple[str, ...]
    ) -> tuple[bool, LimitState]:
        if self._health.available:
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._hit_with(self._redis, item, identifiers)
            except Exception as exc:  # any Redis failure: use the declared fallback
                self._health.record_failure()
                logger.warning("rate limiter: Redis unavailable, using in-process limits: %r", exc)
        metrics.REDIS_FALLBACKS.labels(feature="rate_limit").inc()
        return await self._hit_with(self._memory, item, identifiers)

    @staticmethod
    async def _hit_with(
        limiter: MovingWindowRateLimiter, item: RateLimitItem, identifiers: tuple[str, ...]
    ) -> tuple[bool, LimitState]:
        allowed = await limiter.hit(item, *identifiers)
        stats = await limiter.get_window_stats(item, *identifiers)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return allowed, LimitState(item.amount, max(0, stats.remaining), reset)

    async def close(self) -> None:
        storage: Storage = self._redis.storage
        if isinstance(storage, RedisStorage):
            client = getattr(storage.bridge, "storage", None)
            if client is not None:
                await client.aclose()


def _limits_uri(redis_url: str) -> str:
    """The `limits` library wants `async+redis://` (or `async+redis+unix://`)."""
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


def _window_text(item: RateLimitItem) -> str:
    return (
        f"{item.multiples} {item.GRANULARITY.name}" if item.multiples > 1 else item.GRANULARITY.name
    )

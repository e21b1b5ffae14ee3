"""Per-tenant and per-subject rate limits: a sliding log (every request in the trailing
window counts), both limits checked and counted in ONE Redis round trip.

Algorithm — a sliding log, the same as the `limits` library's moving window: each limit
keeps the times of the requests it let through in the trailing window (a Redis sorted set
scored by milliseconds). A request is let through if every limit has fewer than its
amount in the window, and is then counted against all of them; a refused request counts
against none. No 2x burst at a window edge, exact counts, and each log holds at most its
limit's amount of entries. `RateLimit-Reset` is when the oldest counted request leaves
the window (a slot frees up). One Lua script (EVALSHA, the clock is Redis' own `TIME`)
checks and counts both limits atomically, so API processes share the budget exactly. The
checks of requests that wait together go in one script call (`_ScriptBatcher`, an
`app.db.batching.StatementBatcher`: the first at once, the others with the next call),
which takes them in turn — the same answers as one call each, a round trip for them all.

Declared behaviour when Redis fails or stalls: the check falls back to the same sliding
log kept in this process (each process then enforces the limits on its own share of the
traffic), the fallback is counted in `agent_redis_fallback_total{feature="rate_limit"}`
(once per request), and Redis is retried after `REDIS_RETRY_AFTER_FAILURE_SECONDS`. A
request is never failed or held up by Redis being down: the check is bounded by the Redis
socket timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from limits import RateLimitItem, parse

from app.db.batching import StatementBatcher
from app.errors import RateLimited
from app.observability import metrics
from app.redis_client import RedisHealth, create_redis
from app.settings import RateLimitSettings, RedisSettings

logger = logging.getLogger(__name__)

# The checks of a batch of requests (`_ScriptBatcher`), each in turn. ARGV: the number of
# limits n, per limit its amount and window (ms), then per request the member to add
# (unique per request). KEYS: per request the logs of its n limits, tightest-checked first.
# Returns, as one string (one bulk reply parses faster than nested arrays), per request
# (comma-separated) space-separated integers: the 1-based index of the limit that refused
# the request (0: let through and counted), then per limit the count in its window (this
# request included) and the ms until its oldest entry leaves.
_SLIDING_LOG_LUA = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local n = tonumber(ARGV[1])
local replies = {}
for r = 0, #KEYS / n - 1 do
    local member = ARGV[2 * n + 2 + r]
    local refused = 0
    local counts = {}
    for i = 1, n do
        local key = KEYS[r * n + i]
        local window = tonumber(ARGV[2 * i + 1])
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
        counts[i] = redis.call('ZCARD', key)
        if refused == 0 and counts[i] >= tonumber(ARGV[2 * i]) then
            refused = i
        end
    end
    if refused == 0 then
        for i = 1, n do
            redis.call('ZADD', KEYS[r * n + i], now, member)
            redis.call('PEXPIRE', KEYS[r * n + i], ARGV[2 * i + 1])
            counts[i] = counts[i] + 1
        end
    end
    local result = {refused}
    for i = 1, n do
        local window = tonumber(ARGV[2 * i + 1])
        local oldest = redis.call('ZRANGE', KEYS[r * n + i], 0, 0, 'WITHSCORES')
        local reset = window
        if oldest[2] then
            reset = tonumber(oldest[2]) + window - now
        end
        result[2 * i] = counts[i]
        result[2 * i + 1] = reset
    end
    replies[r + 1] = table.concat(result, ' ')
end
return table.concat(replies, ',')
"""


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


@dataclass(frozen=True)
class _Limit:
    name: str  # the `limit` label of RATE_LIMITED: "tenant" | "subject"
    amount: int
    window_ms: int
    text: str  # "5 per minute", for the 429's detail

    @classmethod
    def parse(cls, name: str, spec: str) -> _Limit:
        item: RateLimitItem = parse(spec)
        return cls(
            name, item.amount, item.get_expiry() * 1000, f"{item.amount} per {_window(item)}"
        )

    def state(self, count: int, reset_ms: float) -> LimitState:
        return LimitState(
            self.amount, max(0, self.amount - count), max(0, math.ceil(reset_ms / 1000))
        )


class SlidingLog:
    """The in-process twin of the Lua script (the fallback): per key the monotonic times of
    the requests it let through in the trailing window."""

    SWEEP_EVERY_CHECKS = 10_000

    def __init__(self) -> None:
        self._logs: dict[str, tuple[int, deque[float]]] = {}
        self._checks = 0

    def hit(self, keys: list[str], limits: tuple[_Limit, ...]) -> list[int]:
        """The script's answer for `keys` (one per limit), computed here."""
        now = time.monotonic() * 1000
        self._checks += 1
        if self._checks % self.SWEEP_EVERY_CHECKS == 0:
            self._sweep(now)
        logs: list[deque[float]] = []
        refused = 0
        for index, (key, limit) in enumerate(zip(keys, limits, strict=True), start=1):
            log = self._logs.setdefault(key, (limit.window_ms, deque()))[1]
            while log and log[0] <= now - limit.window_ms:
                log.popleft()
            if refused == 0 and len(log) >= limit.amount:
                refused = index
            logs.append(log)
        if refused == 0:
            for log in logs:
                log.append(now)
        result = [refused]
        for log, limit in zip(logs, limits, strict=True):
            reset = log[0] + limit.window_ms - now if log else limit.window_ms
            result += [len(log), math.ceil(reset)]
        return result

    def _sweep(self, now: float) -> None:
        """Forget keys whose every entry has left the window (bounded memory)."""
        for key, (window_ms, log) in list(self._logs.items()):
            if not log or log[-1] <= now - window_ms:
                del self._logs[key]


class RateLimiter:
    def __init__(
        self, settings: RateLimitSettings, redis_settings: RedisSettings, redis_url: str
    ) -> None:
        self.enabled = settings.enabled
        # Checked in this order: on a request both would refuse, the tenant's is reported.
        self.limits = (
            _Limit.parse("tenant", settings.per_tenant),
            _Limit.parse("subject", settings.per_subject),
        )
        self._timeout = redis_settings.socket_timeout_seconds * 2
        self._health = RedisHealth(redis_settings.retry_after_failure_seconds)
        self._redis = create_redis(redis_settings, redis_url)
        self._script = self._redis.register_script(_SLIDING_LOG_LUA)
        self._memory = SlidingLog()
        # Members of the Redis logs must be unique across requests and processes.
        self._member_prefix = secrets.token_hex(6) + ":"
        self._member_counter = itertools.count()
        self._batcher = _ScriptBatcher(self)

    async def check(self, tenant: str, subject: str) -> LimitState:
        """Count one request against both limits; raise RateLimited if either is spent
        (the request is then counted against neither)."""
        # The subject's key carries the tenant's length, so no two (tenant, subject) pairs
        # share a key whatever characters they hold.
        keys = [f"agent:rl:t:{tenant}", f"agent:rl:s:{len(tenant)}:{tenant}:{subject}"]
        result = await self._hit(keys)
        states = [
            limit.state(result[2 * i + 1], result[2 * i + 2]) for i, limit in enumerate(self.limits)
        ]
        refused = result[0]
        if refused:
            limit, state = self.limits[refused - 1], states[refused - 1]
            metrics.RATE_LIMITED.labels(limit=limit.name).inc()
            raise RateLimited(
                f"rate limit exceeded ({limit.name}: {limit.text})",
                headers={**state.headers(), "Retry-After": str(max(1, state.reset_seconds))},
            )
        return min(states, key=lambda state: state.remaining)

    async def _hit(self, keys: list[str]) -> list[int]:
        return await self._batcher.write(keys)

    async def hit_batch(self, batch: Sequence[list[str]]) -> list[list[int]]:
        """The script's answers for the requests of `batch` (each its keys), one round trip;
        the in-process log's if Redis fails."""
        if self._health.available:
            args: list[int | str] = [len(self.limits)]
            for limit in self.limits:
                args += [limit.amount, limit.window_ms]
            args += [self._member_prefix + str(next(self._member_counter)) for _ in batch]
            try:
                async with asyncio.timeout(self._timeout):
                    reply: bytes = await self._script(
                        keys=[key for keys in batch for key in keys], args=args
                    )
                    return [[int(value) for value in one.split()] for one in reply.split(b",")]
            except Exception as exc:  # any Redis failure: use the declared fallback
                self._health.record_failure()
                logger.warning("rate limiter: Redis unavailable, using in-process limits: %r", exc)
        metrics.REDIS_FALLBACKS.labels(feature="rate_limit").inc(len(batch))
        return [self._memory.hit(keys, self.limits) for keys in batch]

    async def close(self) -> None:
        await self._redis.aclose()


class _ScriptBatcher(StatementBatcher[list[str], list[int]]):
    """The checks of concurrent requests go to Redis together: one script call (one round
    trip) checks and counts them in turn, as if each had come alone."""

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__("rate_limit_check")
        self.limiter = limiter

    async def write_batch(self, items: Sequence[list[str]]) -> list[list[int]]:
        return await self.limiter.hit_batch(items)


def _window(item: RateLimitItem) -> str:
    return (
        f"{item.multiples} {item.GRANULARITY.name}" if item.multiples > 1 else item.GRANULARITY.name
    )

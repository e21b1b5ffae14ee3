"""A circuit breaker per provider+model whose state lives in Redis, shared by every process.

closed → open after `failure_threshold` consecutive failures, or when failures reach
`failure_rate_threshold` of the outcomes in the last `window_seconds` (once `minimum_calls`
are in) → half-open after `cooldown_seconds`: exactly one caller across all processes gets
the probe permit, every other caller gets `CircuitOpen` → closed after `success_threshold`
probe successes (one probe at a time), or open again, with a fresh cooldown, on a probe
failure. Only outcomes that say something about the provider's health count
(`counts_as_failure`); `release` returns a permit without counting (a 400, a 429).

Each decision is one Lua script on the Redis server: atomic, one round trip, and on the
server's clock, so processes with skewed clocks agree. Outcomes are fenced: a permit counts
only in the circuit generation it was issued in, and a probe only while it holds the slot.

Declared behaviour when Redis fails or stalls: a call to Redis is bounded by
`redis_timeout_seconds` (and by the client's socket timeouts: use
`app.redis_client.create_redis`); the breaker then runs the same rules in process memory —
each process trips on its own share of the failures, nothing is let through unchecked —
logs one warning per outage, counts `agent_redis_fallback_total{feature="llm_breaker"}`, and
tries Redis again after `redis_retry_after_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.llm.breaker_rules import (
    Backend,
    BreakerConfig,
    BreakerDecision,
    BreakerState,
    CircuitOpen,
    CircuitState,
    LocalBreaker,
    Outcome,
    Permit,
    TransitionHook,
    counts_as_failure,
)
from app.observability import metrics
from app.redis_client import RedisHealth

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "Permit",
    "counts_as_failure",
]

logger = logging.getLogger(__name__)

SUCCESS_FLUSH_SECONDS = 0.05  # batched successes (closed fast path) reach Redis this late
_LUA_STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)  # codes 0, 1, 2

_SCRIPT = """
local CLOSED, OPEN, HALF_OPEN = 0, 1, 2
local state_key, window_key, op = KEYS[1], KEYS[2], ARGV[1]
local failure_threshold, rate_threshold = tonumber(ARGV[2]), tonumber(ARGV[3])
local window_ms, minimum_calls = tonumber(ARGV[4]), tonumber(ARGV[5])
local cooldown_ms, success_threshold = tonumber(ARGV[6]), tonumber(ARGV[7])
local probe_timeout_ms, ttl_ms = tonumber(ARGV[8]), tonumber(ARGV[9])
local permit_generation, token = tonumber(ARGV[10]), ARGV[11]
local count = tonumber(ARGV[12]) or 1  -- successes reported together (closed fast path)

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local f = redis.call('HMGET', state_key, 'state', 'generation', 'failures', 'successes',
  'open_until', 'probe', 'probe_until')
local state, generation = tonumber(f[1]) or CLOSED, tonumber(f[2]) or 0
local failures, successes = tonumber(f[3]) or 0, tonumber(f[4]) or 0
local open_until, probe, probe_until = tonumber(f[5]) or 0, f[6] or '', tonumber(f[7]) or 0
local before = state

local bucket_ms = math.max(1, math.floor(window_ms / 10))
local current_bucket = math.floor(now / bucket_ms)

local function window(add, failed, prune)
  if add then
    redis.call('HINCRBY', window_key, 'c' .. current_bucket, count)
    if failed then redis.call('HINCRBY', window_key, 'f' .. current_bucket, count) end
    redis.call('PEXPIRE', window_key, window_ms + bucket_ms)
  end
  local calls, failed_calls = 0, 0
  local entries = redis.call('HGETALL', window_key)
  for i = 1, #entries, 2 do
    local name, count = entries[i], tonumber(entries[i + 1])
    if tonumber(string.sub(name, 2)) <= current_bucket - 10 then
      if prune then redis.call('HDEL', window_key, name) end
    elseif string.sub(name, 1, 1) == 'c' then
      calls = calls + count
    else
      failed_calls = failed_calls + count
    end
  end
  return calls, failed_calls
end

local function restart(new_state)
  state, generation = new_state, generation + 1
  failures, successes, probe, probe_until, open_until = 0, 0, '', 0, 0
  redis.call('DEL', window_key)
end

local function save()
  redis.call('HSET', state_key, 'state', state, 'generation', generation, 'failures', failures,
    'successes', successes, 'open_until', open_until, 'probe', probe, 'probe_until', probe_until)
  redis.call('PEXPIRE', state_key, ttl_ms)
end

if op == 'state' then
  local calls, failed_calls = window(false, false, false)
  local until_ms = now
  if state == OPEN then
    until_ms = open_until
  elseif state == HALF_OPEN then
    until_ms = probe_until
  end
  local in_flight = 0
  if state == HALF_OPEN and probe ~= '' and now < probe_until then in_flight = 1 end
  return {state, failures, successes, in_flight, math.max(0, until_ms - now), calls, failed_calls}
end

if op == 'acquire' then
  if state == CLOSED then return {1, before, state, generation, 0} end
  if state == OPEN then
    if now < open_until then return {0, before, state, generation, open_until - now} end
    state, successes, generation = HALF_OPEN, 0, generation + 1
  elseif probe ~= '' and now < probe_until then
    return {0, before, state, generation, probe_until - now}
  end
  probe, probe_until = token, now + probe_timeout_ms
  save()
  return {1, before, state, generation, 0}
end

if token ~= '' then
  if state ~= HALF_OPEN or probe ~= token then return {before, state} end
  probe, probe_until = '', 0
  if op == 'failure' then
    restart(OPEN)
    open_until = now + cooldown_ms
  elseif op == 'success' then
    successes = successes + 1
    if successes >= success_threshold then restart(CLOSED) end
  end
elseif state == CLOSED and generation == permit_generation and op ~= 'release' then
  local failed = op == 'failure'
  if failed then failures = failures + 1 else failures = 0 end
  local tripped = failures >= failure_threshold
  if rate_threshold > 0 then
    local calls, failed_calls = window(true, failed, true)
    if failed and calls >= minimum_calls and failed_calls >= rate_threshold * calls then
      tripped = true
    end
  end
  if tripped then
    restart(OPEN)
    open_until = now + cooldown_ms
  end
else
  return {before, state}
end
save()
return {before, state}
"""


class CircuitBreaker:
    """Breakers for any number of keys (`"anthropic:claude-sonnet-4-5"`), shared through
    Redis. `redis=None` keeps every circuit in process memory (development, tests)."""

    def __init__(
        self,
        redis: Redis | None,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        redis_timeout_seconds: float = 0.5,
        redis_retry_after_seconds: float = 2.0,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._script = redis.register_script(_SCRIPT) if redis is not None else None
        self._local = LocalBreaker(self.config, clock)
        self._health = RedisHealth(redis_retry_after_seconds)
        self._timeout = redis_timeout_seconds
        self._in_outage = False
        self._on_transition = on_transition
        self._closed_seen: dict[str, tuple[int, float]] = {}  # key → (generation, trusted until)
        self._pending_successes: dict[tuple[str, int], int] = {}
        self._flushing: asyncio.Task[None] | None = None
        c = self.config
        self._limits: list[float | int] = [
            c.failure_threshold,
            c.failure_rate_threshold or 0,
            _ms(c.window_seconds),
            c.minimum_calls,
            _ms(c.cooldown_seconds),
            c.success_threshold,
            _ms(c.probe_timeout_seconds),
            _ms(c.state_ttl_seconds),
        ]

    async def acquire(self, key: str) -> Permit:
        """A permit to call `key`, or `CircuitOpen` (open, or half-open with a probe out).

        Fast path: a circuit this process saw closed within `closed_cache_seconds` is
        trusted without asking Redis (another process's trip is seen that much later)."""
        cached = self._closed_seen.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return Permit(key, cached[0], None, "redis")
        token = uuid.uuid4().hex
        backend: Backend = "redis"
        reply = await self._eval("acquire", key, token=token)
        if reply is None:
            decision, backend = self._local.acquire(key, token), "local"
        else:
            allowed, before, after, generation, retry_ms = reply
            decision = BreakerDecision(
                bool(allowed), _LUA_STATES[before], _LUA_STATES[after], generation, retry_ms / 1000
            )
            self._remember(key, decision.after, generation)
        self._notify(key, decision.before, decision.after)
        if not decision.allowed:
            raise CircuitOpen(key, decision.retry_after_seconds)
        probe = token if decision.after is CircuitState.HALF_OPEN else None
        return Permit(key, decision.generation, probe, backend)

    async def record_success(self, permit: Permit) -> None:
        if permit.backend == "redis" and not permit.is_probe and self.config.closed_cache_seconds:
            # Successes on a closed circuit go to Redis together: one round trip for all
            # that arrived while the last report was in flight.
            batch = (permit.key, permit.generation)
            self._pending_successes[batch] = self._pending_successes.get(batch, 0) + 1
            if self._flushing is None or self._flushing.done():
                self._flushing = asyncio.create_task(self._flush_successes())
            return
        await self._report(permit, "success")

    async def record_failure(self, permit: Permit) -> None:
        self._closed_seen.pop(permit.key, None)  # ask Redis next time
        await self._report(permit, "failure")

    async def flush(self) -> None:
        """Wait until the batched successes are in Redis."""
        while self._flushing is not None and not self._flushing.done():
            await self._flushing

    async def _flush_successes(self) -> None:
        # Collect for a moment: under load one round trip carries many successes.
        await asyncio.sleep(SUCCESS_FLUSH_SECONDS)
        while self._pending_successes:
            batches, self._pending_successes = self._pending_successes, {}
            for (key, generation), count in batches.items():
                reply = await self._eval("success", key, generation, "", count)
                if reply is None:
                    self._local.report(key, None, None, "success")
                else:
                    before, after = _LUA_STATES[reply[0]], _LUA_STATES[reply[1]]
                    self._remember(key, after, generation)
                    self._notify(key, before, after)

    def _remember(self, key: str, state: CircuitState, generation: int) -> None:
        if state is CircuitState.CLOSED and self.config.closed_cache_seconds:
            self._closed_seen[key] = (
                generation,
                time.monotonic() + self.config.closed_cache_seconds,
            )
        else:
            self._closed_seen.pop(key, None)

    async def release(self, permit: Permit) -> None:
        """The call ended in a way that says nothing about the provider: frees a probe slot."""
        await self._report(permit, "release")

    async def record(self, permit: Permit, error: BaseException | None) -> None:
        """Report a call's outcome from the error it raised (None: it succeeded)."""
        if error is None:
            await self.record_success(permit)
        elif counts_as_failure(error):
            await self.record_failure(permit)
        else:
            await self.release(permit)

    @asynccontextmanager
    async def guarded(self, key: str) -> AsyncIterator[Permit]:
        """`async with breaker.guarded(key):` acquires, then reports whatever the body did."""
        permit = await self.acquire(key)
        try:
            yield permit
        except BaseException as exc:
            await self.record(permit, exc)
            raise
        await self.record_success(permit)

    async def state(self, key: str) -> BreakerState:
        reply = await self._eval("state", key)
        if reply is None:
            return self._local.state(key)
        state, failures, successes, in_flight, retry_ms, calls, failed_calls = reply
        return BreakerState(
            _LUA_STATES[state], failures, successes, bool(in_flight), retry_ms / 1000,
            calls, failed_calls, "redis",
        )  # fmt: skip

    async def _report(self, permit: Permit, outcome: Outcome) -> None:
        if permit.backend == "local":
            before, after = self._local.report(
                permit.key, permit.generation, permit.probe_token, outcome
            )
        else:
            token = permit.probe_token or ""
            reply = await self._eval(outcome, permit.key, permit.generation, token)
            if reply is None:
                before, after = self._local.report(permit.key, None, None, outcome)
            else:
                before, after = _LUA_STATES[reply[0]], _LUA_STATES[reply[1]]
                if after is not CircuitState.CLOSED:
                    self._closed_seen.pop(permit.key, None)
        self._notify(permit.key, before, after)

    async def _eval(
        self, op: str, key: str, generation: int = 0, token: str = "", count: int = 1
    ) -> list[int] | None:
        """Run the script; None means Redis is unavailable and the local breaker decides."""
        if self._script is None:
            return None
        if not self._health.available:
            metrics.REDIS_FALLBACKS.labels(feature="llm_breaker").inc()
            return None
        base = f"{self.config.key_prefix}:{{{key}}}"  # one hash slot for both keys
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._script(
                    keys=[base, f"{base}:window"],
                    args=[op, *self._limits, generation, token, count],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._health.record_failure()
            metrics.REDIS_FALLBACKS.labels(feature="llm_breaker").inc()
            if not self._in_outage:
                self._in_outage = True
                logger.warning(
                    "circuit breaker: Redis unavailable, circuits are per-process: %r", exc
                )
            return None
        self._health.record_success()
        if self._in_outage:
            self._in_outage = False
            self._local.reset()  # the shared state in Redis is authoritative again
            logger.info("circuit breaker: Redis reachable again, circuits are shared again")
        return [int(value) for value in reply]

    def _notify(self, key: str, before: CircuitState, after: CircuitState) -> None:
        if before is not after and self._on_transition is not None:
            self._on_transition(key, before, after)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))

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
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, NamedTuple

import anthropic
import httpx
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.observability import metrics
from app.redis_client import RedisHealth

logger = logging.getLogger(__name__)

Backend = Literal["redis", "local"]
Outcome = Literal["success", "failure", "release"]
TransitionHook = Callable[[str, "CircuitState", "CircuitState"], None]

# Error types Anthropic reports for its own trouble (an `error` event inside a 200 stream
# carries only the type, so the status code alone cannot tell).
_SERVER_ERROR_TYPES = frozenset({"api_error", "overloaded_error", "timeout_error"})
_WINDOW_BUCKETS = 10  # the failure-rate window slides in tenths of `window_seconds`


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


SUCCESS_FLUSH_SECONDS = 0.05  # batched successes (closed fast path) reach Redis this late
_LUA_STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)  # codes 0, 1, 2


class BreakerConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    failure_threshold: int = Field(default=5, ge=1, le=1000, description="Consecutive failures")
    failure_rate_threshold: float | None = Field(
        default=0.5, gt=0, le=1, description="Failure share of the window that opens; None: off"
    )
    window_seconds: float = Field(default=30.0, gt=0, le=3600)
    minimum_calls: int = Field(
        default=10, ge=1, le=100_000, description="Outcomes in the window before the rate counts"
    )
    cooldown_seconds: float = Field(default=60.0, gt=0, le=3600, description="Open → one probe")
    success_threshold: int = Field(
        default=2, ge=1, le=100, description="Probe successes that close the circuit"
    )
    probe_timeout_seconds: float = Field(
        default=150.0,
        gt=0,
        le=3600,
        description="A probe silent this long is presumed dead and another caller may probe; "
        "longer than a model call's timeout",
    )
    state_ttl_seconds: float = Field(
        default=86_400, ge=3600, le=30 * 86_400, description="Redis keeps an idle circuit this long"
    )
    key_prefix: str = Field(default="agent:cb", min_length=1)
    closed_cache_seconds: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Trust a closed verdict this long without asking Redis, and send successes "
        "in batches (0: every call asks Redis)",
    )


@dataclass(frozen=True)
class Permit:
    """Leave to make one call on `key`. Report its outcome once: `record_success`,
    `record_failure`, or `release` when the outcome says nothing about the provider."""

    key: str
    generation: int
    probe_token: str | None  # set when this call is the half-open probe
    backend: Backend

    @property
    def is_probe(self) -> bool:
        return self.probe_token is not None


class CircuitOpen(Exception):
    """The circuit for `key` refuses calls: fail fast or fall back to another model."""

    def __init__(self, key: str, retry_after_seconds: float) -> None:
        super().__init__(f"circuit {key} is open; retry after {retry_after_seconds:.1f}s")
        self.key = key
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class BreakerState:
    state: CircuitState
    consecutive_failures: int
    half_open_successes: int
    probe_in_flight: bool
    retry_after_seconds: float  # open: until the cooldown ends; half-open: until the probe expires
    window_calls: int
    window_failures: int
    backend: Backend


def counts_as_failure(outcome: BaseException | int) -> bool:
    """Whether an error (or an HTTP status) says the provider is unhealthy: 5xx, 529,
    timeouts and connection errors do; 4xx — our own bad request, a 429 back-off — do not."""
    if isinstance(outcome, int):
        return outcome >= 500
    if isinstance(outcome, anthropic.APIStatusError):
        return outcome.status_code >= 500 or outcome.type in _SERVER_ERROR_TYPES
    if isinstance(outcome, httpx.HTTPStatusError):
        return outcome.response.status_code >= 500
    return isinstance(
        outcome,
        anthropic.APIConnectionError  # includes APITimeoutError
        | TimeoutError
        | ConnectionError
        | httpx.TimeoutException
        | httpx.NetworkError
        | httpx.RemoteProtocolError,
    )


class _Decision(NamedTuple):
    allowed: bool
    before: CircuitState
    after: CircuitState
    generation: int
    retry_after_seconds: float


@dataclass
class _Circuit:
    generation: int
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    successes: int = 0
    open_until: float = 0.0
    probe: str | None = None
    probe_until: float = 0.0
    window: dict[int, list[int]] = field(default_factory=dict)  # bucket → [calls, failures]


class LocalBreaker:
    """The same rules as the Lua script, in process memory: the fallback while Redis is
    unreachable. It never awaits, so each step is atomic for asyncio callers."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        # Generations are unique for the process's life, so a permit from before a reset
        # never matches a new circuit.
        self._generations = itertools.count(1)

    def reset(self) -> None:
        self._circuits.clear()

    def acquire(self, key: str, token: str) -> _Decision:
        circuit, now = self._circuit(key), self._clock()
        before = circuit.state
        if circuit.state is CircuitState.CLOSED:
            return _Decision(True, before, before, circuit.generation, 0.0)
        if circuit.state is CircuitState.OPEN:
            if now < circuit.open_until:
                return _Decision(
                    False, before, before, circuit.generation, circuit.open_until - now
                )
            circuit.state, circuit.successes = CircuitState.HALF_OPEN, 0
            circuit.generation = next(self._generations)
        elif circuit.probe is not None and now < circuit.probe_until:
            return _Decision(False, before, before, circuit.generation, circuit.probe_until - now)
        circuit.probe, circuit.probe_until = token, now + self.config.probe_timeout_seconds
        return _Decision(True, before, circuit.state, circuit.generation, 0.0)

    def report(
        self, key: str, generation: int | None, token: str | None, outcome: Outcome
    ) -> tuple[CircuitState, CircuitState]:
        """Apply one outcome; `generation=None` counts it in the current closed circuit (an
        outcome of a Redis permit that could not reach Redis)."""
        circuit, now = self._circuit(key), self._clock()
        before = circuit.state
        if token is not None:
            if circuit.state is not CircuitState.HALF_OPEN or circuit.probe != token:
                return before, before  # a stale probe: its slot was taken over
            circuit.probe = None
            if outcome == "failure":
                self._trip(circuit, now)
            elif outcome == "success":
                circuit.successes += 1
                if circuit.successes >= self.config.success_threshold:
                    self._close(circuit)
        elif (
            circuit.state is CircuitState.CLOSED
            and generation in (None, circuit.generation)
            and outcome != "release"
        ):
            failed = outcome == "failure"
            circuit.failures = circuit.failures + 1 if failed else 0
            tripped = circuit.failures >= self.config.failure_threshold
            rate = self.config.failure_rate_threshold
            if rate is not None:
                calls, failures = self._count_in_window(circuit, now, failed)
                tripped = tripped or (
                    failed and calls >= self.config.minimum_calls and failures >= rate * calls
                )
            if tripped:
                self._trip(circuit, now)
        return before, circuit.state

    def state(self, key: str) -> BreakerState:
        circuit, now = self._circuit(key), self._clock()
        until = {
            CircuitState.OPEN: circuit.open_until,
            CircuitState.HALF_OPEN: circuit.probe_until,
        }.get(circuit.state, now)
        oldest = self._bucket(now) - _WINDOW_BUCKETS + 1
        live = [counts for bucket, counts in circuit.window.items() if bucket >= oldest]
        return BreakerState(
            state=circuit.state,
            consecutive_failures=circuit.failures,
            half_open_successes=circuit.successes,
            probe_in_flight=circuit.state is CircuitState.HALF_OPEN
            and circuit.probe is not None
            and now < circuit.probe_until,
            retry_after_seconds=max(0.0, until - now),
            window_calls=sum(calls for calls, _ in live),
            window_failures=sum(failures for _, failures in live),
            backend="local",
        )

    def _circuit(self, key: str) -> _Circuit:
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._circuits[key] = _Circuit(next(self._generations))
        return circuit

    def _bucket(self, now: float) -> int:
        bucket_ms = max(1, int(self.config.window_seconds * 1000) // _WINDOW_BUCKETS)
        return int(now * 1000) // bucket_ms

    def _count_in_window(self, circuit: _Circuit, now: float, failed: bool) -> tuple[int, int]:
        current = self._bucket(now)
        counts = circuit.window.setdefault(current, [0, 0])
        counts[0] += 1
        counts[1] += int(failed)
        for bucket in [b for b in circuit.window if b <= current - _WINDOW_BUCKETS]:
            del circuit.window[bucket]
        return sum(c for c, _ in circuit.window.values()), sum(
            f for _, f in circuit.window.values()
        )

    def _trip(self, circuit: _Circuit, now: float) -> None:
        self._restart(circuit, CircuitState.OPEN)
        circuit.open_until = now + self.config.cooldown_seconds

    def _close(self, circuit: _Circuit) -> None:
        self._restart(circuit, CircuitState.CLOSED)

    def _restart(self, circuit: _Circuit, state: CircuitState) -> None:
        circuit.state, circuit.generation = state, next(self._generations)
        circuit.failures = circuit.successes = 0
        circuit.probe, circuit.probe_until, circuit.open_until = None, 0.0, 0.0
        circuit.window.clear()


# KEYS: state hash, window hash. ARGV: op, failure_threshold, failure rate (0: off),
# window_ms, minimum_calls, cooldown_ms, success_threshold, probe_timeout_ms, ttl_ms,
# permit generation, token (acquire: the would-be probe's; outcomes: the permit's, or '').
# Mirrors LocalBreaker line for line; times are the server's, in ms.
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
            decision = _Decision(
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

"""The circuit breaker's vocabulary (states, config, permits, what counts as a failure) and
its rules in process memory: `LocalBreaker`, the fallback of `app.llm.breaker.CircuitBreaker`
while Redis is unreachable — the same state machine as its Lua script."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, NamedTuple

import anthropic
import httpx
from pydantic import BaseModel, ConfigDict, Field

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


class BreakerDecision(NamedTuple):
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

    def acquire(self, key: str, token: str) -> BreakerDecision:
        circuit, now = self._circuit(key), self._clock()
        before = circuit.state
        if circuit.state is CircuitState.CLOSED:
            return BreakerDecision(True, before, before, circuit.generation, 0.0)
        if circuit.state is CircuitState.OPEN:
            if now < circuit.open_until:
                return BreakerDecision(
                    False, before, before, circuit.generation, circuit.open_until - now
                )
            circuit.state, circuit.successes = CircuitState.HALF_OPEN, 0
            circuit.generation = next(self._generations)
        elif circuit.probe is not None and now < circuit.probe_until:
            return BreakerDecision(
                False, before, before, circuit.generation, circuit.probe_until - now
            )
        circuit.probe, circuit.probe_until = token, now + self.config.probe_timeout_seconds
        return BreakerDecision(True, before, circuit.state, circuit.generation, 0.0)

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

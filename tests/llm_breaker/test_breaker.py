"""The circuit breaker on the real Valkey (and, where the rules are the same, on its
in-process twin): trips, fail-fast, one probe across callers and processes, fencing of late
reports, and the per-process fallback while Redis is down or stalled."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from redis.asyncio import Redis

from app.llm.breaker import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    Permit,
    counts_as_failure,
)
from app.redis_client import create_redis
from app.settings import RedisSettings
from tests.conftest import PROJECT_ROOT
from tests.fixtures_redis import DedicatedRedis

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
KEY = "anthropic:claude-test"
COOLDOWN = 0.3
BreakerFactory = Callable[..., CircuitBreaker]
Transitions = list[tuple[str, CircuitState, CircuitState]]


@pytest.fixture(autouse=True)
def _leave_no_queued_sessions() -> None:
    """Overrides the runtime's clean-up: these tests queue no sessions and need no database."""


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(RedisSettings(), redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test:cb:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def transitions() -> Transitions:
    return []


@pytest.fixture(params=["redis", "local"])
def make_breaker(
    request: pytest.FixtureRequest, redis_client: Redis, prefix: str, transitions: Transitions
) -> BreakerFactory:
    """Breakers on the shared Redis, and (same tests) on the in-process twin alone."""

    def factory(**config: Any) -> CircuitBreaker:
        settings = BreakerConfig(key_prefix=prefix, **{"cooldown_seconds": COOLDOWN, **config})
        redis = redis_client if request.param == "redis" else None
        return CircuitBreaker(
            redis, settings, on_transition=lambda *change: transitions.append(change)
        )

    return factory


async def fail(breaker: CircuitBreaker, times: int, key: str = KEY) -> None:
    for _ in range(times):
        await breaker.record_failure(await breaker.acquire(key))


async def succeed(breaker: CircuitBreaker, times: int, key: str = KEY) -> None:
    for _ in range(times):
        await breaker.record_success(await breaker.acquire(key))


async def open_then_cool_down(breaker: CircuitBreaker) -> None:
    await fail(breaker, breaker.config.failure_threshold)
    assert (await breaker.state(KEY)).state is OPEN
    await asyncio.sleep(breaker.config.cooldown_seconds + 0.05)


def status_error(status: int, error_type: str | None = None) -> anthropic.APIStatusError:
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://fake/v1/messages"))
    body = {"type": "error", "error": {"type": error_type, "message": "x"}} if error_type else None
    error_class = {
        400: anthropic.BadRequestError,
        429: anthropic.RateLimitError,
        500: anthropic.InternalServerError,
        529: anthropic.OverloadedError,
    }.get(status, anthropic.APIStatusError)
    return error_class("x", response=response, body=body)


# -- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "counts"),
    [
        (500, True),
        (503, True),
        (529, True),
        (400, False),
        (401, False),
        (429, False),
        (status_error(500), True),
        (status_error(529, "overloaded_error"), True),
        (status_error(200, "overloaded_error"), True),  # an error event mid-stream
        (status_error(200, "invalid_request_error"), False),
        (status_error(400, "invalid_request_error"), False),
        (status_error(429, "rate_limit_error"), False),
        (anthropic.APIConnectionError(request=httpx2.Request("POST", "http://fake")), True),
        (anthropic.APITimeoutError(request=httpx2.Request("POST", "http://fake")), True),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (httpx.ConnectTimeout("slow"), True),
        (ValueError("our bug"), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_only_provider_health_failures_count(outcome: BaseException | int, counts: bool) -> None:
    assert counts_as_failure(outcome) is counts


# -- the state machine, on Redis and on the in-process twin --------------------------------


async def test_opens_after_n_consecutive_failures_and_fails_fast(
    make_breaker: BreakerFactory, transitions: Transitions
) -> None:
    breaker = make_breaker(cooldown_seconds=5)
    await fail(breaker, 4)
    await succeed(breaker, 1)  # a success breaks the run
    assert (await breaker.state(KEY)).consecutive_failures == 0
    await fail(breaker, 4)
    assert (await breaker.state(KEY)).state is CLOSED
    await fail(breaker, 1)

    started = time.perf_counter()
    with pytest.raises(CircuitOpen) as refused:
        await breaker.acquire(KEY)
    assert time.perf_counter() - started < 0.1
    assert refused.value.key == KEY
    assert 4 < refused.value.retry_after_seconds <= 5
    state = await breaker.state(KEY)
    assert state.state is OPEN and 4 < state.retry_after_seconds <= 5
    assert transitions == [(KEY, CLOSED, OPEN)]
    await breaker.acquire("anthropic:another-model")  # circuits are per key


async def test_client_errors_and_rate_limits_do_not_count(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    for error in [status_error(400, "invalid_request_error"), status_error(429)] * 5:
        with pytest.raises(anthropic.APIStatusError):
            async with breaker.guarded(KEY):
                raise error
    state = await breaker.state(KEY)
    assert (state.state, state.consecutive_failures, state.window_calls) == (CLOSED, 0, 0)

    for _ in range(5):
        with pytest.raises(anthropic.InternalServerError):
            async with breaker.guarded(KEY):
                raise status_error(500)
    assert (await breaker.state(KEY)).state is OPEN


async def test_failure_rate_over_the_window_opens(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(
        failure_threshold=100, failure_rate_threshold=0.5, minimum_calls=10, window_seconds=30
    )
    await fail(breaker, 4)  # 100% failures, but fewer calls than minimum_calls
    await succeed(breaker, 5)
    state = await breaker.state(KEY)
    assert (state.state, state.window_calls, state.window_failures) == (CLOSED, 9, 4)
    await fail(breaker, 1)  # 5 of 10
    assert (await breaker.state(KEY)).state is OPEN


async def test_failure_rate_forgets_outcomes_older_than_the_window(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(
        failure_threshold=100, failure_rate_threshold=0.5, minimum_calls=5, window_seconds=0.5
    )
    await fail(breaker, 4)
    await asyncio.sleep(0.6)
    await succeed(breaker, 4)
    await fail(breaker, 1)  # 1 of 5 in the window (5 of 9 if the old ones still counted)
    state = await breaker.state(KEY)
    assert (state.state, state.window_calls, state.window_failures) == (CLOSED, 5, 1)


async def test_after_the_cooldown_exactly_one_of_fifty_concurrent_callers_probes(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker()
    await open_then_cool_down(breaker)
    results = await asyncio.gather(
        *(breaker.acquire(KEY) for _ in range(50)), return_exceptions=True
    )
    permits = [result for result in results if isinstance(result, Permit)]
    assert len(permits) == 1 and permits[0].is_probe
    assert all(isinstance(result, CircuitOpen) for result in results if result is not permits[0])
    state = await breaker.state(KEY)
    assert state.state is HALF_OPEN and state.probe_in_flight


async def test_m_probe_successes_close_the_circuit_one_probe_at_a_time(
    make_breaker: BreakerFactory, transitions: Transitions
) -> None:
    breaker = make_breaker(success_threshold=2)
    await open_then_cool_down(breaker)
    first = await breaker.acquire(KEY)
    with pytest.raises(CircuitOpen):
        await breaker.acquire(KEY)
    await breaker.record_success(first)
    state = await breaker.state(KEY)
    assert (state.state, state.half_open_successes, state.probe_in_flight) == (HALF_OPEN, 1, False)

    second = await breaker.acquire(KEY)
    assert second.is_probe
    with pytest.raises(CircuitOpen):
        await breaker.acquire(KEY)
    await breaker.record_success(second)
    assert (await breaker.state(KEY)).state is CLOSED
    assert not (await breaker.acquire(KEY)).is_probe
    assert transitions == [(KEY, CLOSED, OPEN), (KEY, OPEN, HALF_OPEN), (KEY, HALF_OPEN, CLOSED)]


async def test_a_failed_probe_reopens_with_a_fresh_cooldown(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker(success_threshold=2)
    await open_then_cool_down(breaker)
    await breaker.record_success(await breaker.acquire(KEY))
    await breaker.record_failure(await breaker.acquire(KEY))
    with pytest.raises(CircuitOpen) as refused:
        await breaker.acquire(KEY)
    assert COOLDOWN - 0.1 < refused.value.retry_after_seconds <= COOLDOWN
    state = await breaker.state(KEY)
    assert (state.state, state.half_open_successes) == (OPEN, 0)
    await asyncio.sleep(COOLDOWN + 0.05)
    assert (await breaker.acquire(KEY)).is_probe


async def test_a_probe_that_never_reports_is_replaced_after_the_probe_timeout(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(probe_timeout_seconds=0.3)
    await open_then_cool_down(breaker)
    lost = await breaker.acquire(KEY)
    with pytest.raises(CircuitOpen):
        await breaker.acquire(KEY)
    await asyncio.sleep(0.35)
    replacement = await breaker.acquire(KEY)
    assert replacement.is_probe and replacement.probe_token != lost.probe_token

    await breaker.record_success(lost)  # too late: its slot was taken over
    assert (await breaker.state(KEY)).half_open_successes == 0
    await breaker.record_success(replacement)
    assert (await breaker.state(KEY)).half_open_successes == 1


async def test_release_frees_the_probe_slot_without_counting(make_breaker: BreakerFactory) -> None:
    breaker = make_breaker()
    await open_then_cool_down(breaker)
    await breaker.release(await breaker.acquire(KEY))  # e.g. the probe got a 429
    state = await breaker.state(KEY)
    assert (state.state, state.half_open_successes, state.probe_in_flight) == (HALF_OPEN, 0, False)
    assert (await breaker.acquire(KEY)).is_probe


async def test_a_late_report_from_before_the_trip_changes_nothing(
    make_breaker: BreakerFactory,
) -> None:
    breaker = make_breaker(cooldown_seconds=5)
    early = await breaker.acquire(KEY)
    await fail(breaker, 5)
    await breaker.record_success(early)
    await breaker.record_failure(early)
    state = await breaker.state(KEY)
    assert (state.state, state.consecutive_failures) == (OPEN, 0)


# -- two real worker processes on one Redis ------------------------------------------------

WORKER = """
import asyncio, json, sys, time
from app.llm.breaker import BreakerConfig, CircuitBreaker, CircuitOpen
from app.redis_client import create_redis
from app.settings import RedisSettings

async def race(breaker, key, start_at, seconds):
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds
    counts = {"probes": 0, "refused": 0}
    async def caller():
        while time.monotonic() < deadline:
            try:
                await breaker.acquire(key)  # a probe that never reports: it keeps the slot
                counts["probes"] += 1
            except CircuitOpen:
                counts["refused"] += 1
    await asyncio.gather(*(caller() for _ in range(10)))
    return counts

async def main():
    url, prefix, key, cooldown = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    redis = create_redis(RedisSettings(), url)
    config = BreakerConfig(key_prefix=prefix, cooldown_seconds=cooldown, probe_timeout_seconds=60)
    breaker = CircuitBreaker(redis, config)
    print(json.dumps({"ready": True}), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        command, *args = line.split()
        if command == "fail":
            for _ in range(int(args[0])):
                await breaker.record_failure(await breaker.acquire(key))
            reply = {"failed": int(args[0])}
        elif command == "check":
            try:
                permit = await breaker.acquire(key)
                await breaker.release(permit)
                reply = {"open": False}
            except CircuitOpen as exc:
                reply = {"open": True, "retry_after": exc.retry_after_seconds}
        else:
            reply = await race(breaker, key, float(args[0]), float(args[1]))
        print(json.dumps(reply), flush=True)
    await redis.aclose()

asyncio.run(main())
"""


class Worker:
    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process, self.log = process, log

    @classmethod
    async def start(cls, log: Path, *args: str) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, *args, cwd=PROJECT_ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=log.open("wb"),
        )  # fmt: skip
        worker = cls(process, log)
        assert await worker.read() == {"ready": True}
        return worker

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=30)
        assert line, f"worker exited: {self.log.read_text()}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def ask(self, command: str) -> dict[str, Any]:
        await self.send(command)
        return await self.read()

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def test_two_worker_processes_share_the_circuit_and_only_one_probe_goes_out(
    redis_url: str, redis_client: Redis, prefix: str, tmp_path: Path
) -> None:
    cooldown = 1.5
    args = (redis_url, prefix, KEY, str(cooldown))
    first, second = await asyncio.gather(
        Worker.start(tmp_path / "first.log", *args), Worker.start(tmp_path / "second.log", *args)
    )
    try:
        assert await second.ask("check") == {"open": False}
        opened_at = time.monotonic()
        assert await first.ask("fail 5") == {"failed": 5}
        seen_by_first, seen_by_second = await first.ask("check"), await second.ask("check")
        assert time.monotonic() - opened_at < cooldown, "too slow to see the circuit open"
        assert seen_by_first["open"] and seen_by_second["open"]  # `second` never failed a call
        assert 0 < seen_by_second["retry_after"] <= cooldown

        await asyncio.sleep(max(0.0, opened_at + cooldown + 0.1 - time.monotonic()))
        start_at = time.time() + 0.3
        for worker in (first, second):
            await worker.send(f"race {start_at} 0.5")
        races = [await first.read(), await second.read()]
        assert sum(race["probes"] for race in races) == 1, races
        assert all(race["refused"] > 0 for race in races), races  # both really raced
        config = BreakerConfig(key_prefix=prefix)
        state = await CircuitBreaker(redis_client, config).state(KEY)
        assert state.state is HALF_OPEN and state.probe_in_flight
    finally:
        await asyncio.gather(first.stop(), second.stop())


# -- Redis down or stalled: the per-process fallback ---------------------------------------


def breaker_on(redis: Redis, prefix: str, **config: Any) -> CircuitBreaker:
    return CircuitBreaker(
        redis,
        BreakerConfig(key_prefix=prefix, cooldown_seconds=5, **config),
        redis_timeout_seconds=0.3,
        redis_retry_after_seconds=0.2,
    )


async def test_with_redis_down_the_breaker_still_opens_in_process_and_recovers(
    dedicated_redis: DedicatedRedis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.llm.breaker")
    client = create_redis(RedisSettings(), dedicated_redis.url)
    other_client = create_redis(RedisSettings(), dedicated_redis.url)
    breaker, other_process = breaker_on(client, prefix), breaker_on(other_client, prefix)
    try:
        await fail(breaker, 1)
        assert (await other_process.state(KEY)).consecutive_failures == 1  # shared

        dedicated_redis.stop()
        started = time.perf_counter()
        for _ in range(5):
            await fail(breaker, 1)
            await asyncio.sleep(0.05)  # long enough for Redis to be retried in between
        with pytest.raises(CircuitOpen):
            await breaker.acquire(KEY)
        assert time.perf_counter() - started < 2.0
        assert (await breaker.state(KEY)).backend == "local"
        warnings = [
            r
            for r in caplog.records
            if r.name == "app.llm.breaker" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1, "one warning per outage"

        dedicated_redis.start()
        await asyncio.sleep(0.25)
        state = await breaker.state(KEY)
        assert state.backend == "redis"
        await fail(breaker, 1)
        assert (await other_process.state(KEY)).consecutive_failures >= 1
        assert (await other_process.state(KEY)).backend == "redis"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()
        await other_client.aclose()


async def test_a_stalled_redis_never_hangs_a_call_and_the_breaker_still_opens(
    dedicated_redis: DedicatedRedis, prefix: str
) -> None:
    client = create_redis(RedisSettings(), dedicated_redis.url)
    breaker = breaker_on(client, prefix)
    try:
        await succeed(breaker, 1)
        dedicated_redis.pause()
        try:
            started = time.perf_counter()
            await asyncio.wait_for(fail(breaker, 5), timeout=5)
            with pytest.raises(CircuitOpen):
                await breaker.acquire(KEY)
            elapsed = time.perf_counter() - started
        finally:
            dedicated_redis.resume()
        assert elapsed < 2.0, f"took {elapsed:.2f}s with Redis stalled"
    finally:
        await client.aclose()


# -- the closed fast path (LLM_BREAKER_CLOSED_CACHE_SECONDS) ---------------------------------


async def test_a_trusted_closed_verdict_expires_and_then_the_shared_trip_is_seen(
    redis_client: Redis, prefix: str
) -> None:
    config = BreakerConfig(key_prefix=prefix, failure_threshold=2, closed_cache_seconds=0.3)
    here, there = CircuitBreaker(redis_client, config), CircuitBreaker(redis_client, config)
    key = "anthropic:fast"
    await here.release(await here.acquire(key))  # seen closed: trusted for 0.3 s
    for _ in range(2):
        await there.record_failure(await there.acquire(key))
    assert (await there.state(key)).state is CircuitState.OPEN
    await here.acquire(key)  # still trusted: at most closed_cache_seconds stale
    await asyncio.sleep(0.35)
    with pytest.raises(CircuitOpen):
        await here.acquire(key)


async def test_batched_successes_all_reach_the_shared_window(
    redis_client: Redis, prefix: str
) -> None:
    config = BreakerConfig(key_prefix=prefix, closed_cache_seconds=5)
    breaker = CircuitBreaker(redis_client, config)
    key = "anthropic:batched"
    permits = [await breaker.acquire(key) for _ in range(25)]
    for permit in permits:
        await breaker.record_success(permit)
    await breaker.flush()
    state = await breaker.state(key)
    assert state.window_calls == 25 and state.window_failures == 0
    # A failure still goes straight to Redis and ends the trust in the closed verdict.
    await breaker.record_failure(await breaker.acquire(key))
    assert (await breaker.state(key)).consecutive_failures == 1

"""Rate limits: a sliding log per subject and per tenant (both checked and counted in one
Redis script), 429 with headers, and the declared fallback (the same sliding log in
process) when Redis is down or stalled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.main import create_app
from app.settings import RateLimitSettings, RedisSettings
from tests.conftest import TokenFactory, bearer, client_for, make_settings
from tests.fixtures_redis import DedicatedRedis


def _limited_app(
    context_factory: Any, per_subject: str, per_tenant: str = "1000/minute", **urls: str
) -> Any:
    settings = make_settings(
        rate_limit=RateLimitSettings(per_subject=per_subject, per_tenant=per_tenant),
        # short enough that a stalled Redis is noticed quickly, long enough that a garbage
        # collection of the test process (~0.2 s once the suite has built up its heap) is
        # not taken for one
        redis=RedisSettings(socket_timeout_seconds=0.5, connect_timeout_seconds=0.5),
    )
    return create_app(settings, context=context_factory(settings, **urls))


async def test_subject_limit_returns_429_with_headers_and_spares_others(
    context_factory: Any, tenant: str, make_token: TokenFactory
) -> None:
    app = _limited_app(context_factory, per_subject="5/minute")
    alice, bob = make_token(tenant, sub="alice"), make_token(tenant, sub="bob")
    other_tenant = make_token(tenant + "-other", sub="alice")
    async with client_for(app) as http:
        statuses = []
        for expected_remaining in range(4, -1, -1):
            response = await http.get("/v1/me", headers=bearer(alice))
            statuses.append(response.status_code)
            assert response.headers["RateLimit-Limit"] == "5"
            assert response.headers["RateLimit-Remaining"] == str(expected_remaining)
        assert statuses == [200] * 5
        refused = await http.get("/v1/me", headers=bearer(alice))
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert "RateLimit-Reset" in refused.headers
        # Another caller of the same tenant, and the same caller name in another tenant,
        # have budgets of their own.
        assert (await http.get("/v1/me", headers=bearer(bob))).status_code == 200
        assert (await http.get("/v1/me", headers=bearer(other_tenant))).status_code == 200


async def test_tenant_limit_covers_all_its_callers(
    context_factory: Any, tenant: str, make_token: TokenFactory
) -> None:
    app = _limited_app(context_factory, per_subject="100/minute", per_tenant="4/minute")
    async with client_for(app) as http:
        codes = [
            (
                await http.get("/v1/me", headers=bearer(make_token(tenant, sub=f"user{i}")))
            ).status_code
            for i in range(5)
        ]
        assert codes == [200, 200, 200, 200, 429]
        other = make_token(tenant + "-b", sub="user0")
        assert (await http.get("/v1/me", headers=bearer(other))).status_code == 200


async def test_limits_are_shared_between_processes_through_redis(
    context_factory: Any, tenant: str, make_token: TokenFactory
) -> None:
    # Two app instances stand for two API processes: they share one budget.
    first = _limited_app(context_factory, per_subject="4/minute")
    second = _limited_app(context_factory, per_subject="4/minute")
    token = make_token(tenant)
    async with client_for(first) as a, client_for(second) as b:
        codes = [
            (await (a if i % 2 else b).get("/v1/me", headers=bearer(token))).status_code
            for i in range(5)
        ]
    assert codes == [200, 200, 200, 200, 429]


async def test_redis_down_falls_back_to_in_process_limits(
    context_factory: Any, dedicated_redis: DedicatedRedis, tenant: str, make_token: TokenFactory
) -> None:
    app = _limited_app(context_factory, per_subject="3/minute", redis_url=dedicated_redis.url)
    token = make_token(tenant)
    dedicated_redis.stop()
    async with client_for(app) as http:
        started = time.perf_counter()
        codes = [(await http.get("/v1/me", headers=bearer(token))).status_code for _ in range(4)]
        elapsed = time.perf_counter() - started
    assert codes == [200, 200, 200, 429]  # still limited, never a 5xx
    assert elapsed < 2.0


async def test_stalled_redis_never_hangs_a_request(
    context_factory: Any, dedicated_redis: DedicatedRedis, tenant: str, make_token: TokenFactory
) -> None:
    app = _limited_app(context_factory, per_subject="50/minute", redis_url=dedicated_redis.url)
    token = make_token(tenant)
    async with client_for(app) as http:
        assert (await http.get("/v1/me", headers=bearer(token))).status_code == 200
        dedicated_redis.pause()
        try:
            started = time.perf_counter()
            responses = await asyncio.wait_for(
                asyncio.gather(*(http.get("/v1/me", headers=bearer(token)) for _ in range(10))),
                timeout=5,
            )
            elapsed = time.perf_counter() - started
        finally:
            dedicated_redis.resume()
    assert [r.status_code for r in responses] == [200] * 10
    assert elapsed < 2.0, f"requests took {elapsed:.2f}s with Redis stalled"


async def test_a_refused_request_counts_against_neither_limit(
    context_factory: Any, tenant: str, make_token: TokenFactory
) -> None:
    # Both limits are checked and counted in one step: alice's refused third request does
    # not use up the tenant's budget, so bob still gets the tenant's third slot.
    app = _limited_app(context_factory, per_subject="2/minute", per_tenant="3/minute")
    alice, bob = make_token(tenant, sub="alice"), make_token(tenant, sub="bob")
    async with client_for(app) as http:
        codes = [(await http.get("/v1/me", headers=bearer(alice))).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        last_slot = await http.get("/v1/me", headers=bearer(bob))
        assert last_slot.status_code == 200
        assert last_slot.headers["RateLimit-Limit"] == "3"
        assert last_slot.headers["RateLimit-Remaining"] == "0"
        refused = await http.get("/v1/me", headers=bearer(bob))
        assert refused.status_code == 429
        assert "tenant: 3 per minute" in refused.json()["detail"]


@pytest.mark.parametrize("backend", ["redis", "in-process"])
async def test_the_window_slides_so_there_is_no_burst_at_its_edge(
    context_factory: Any,
    dedicated_redis: DedicatedRedis,
    tenant: str,
    make_token: TokenFactory,
    backend: str,
) -> None:
    app = _limited_app(context_factory, per_subject="2/second", redis_url=dedicated_redis.url)
    if backend == "in-process":
        dedicated_redis.stop()
    token = bearer(make_token(tenant))
    async with client_for(app) as http:
        started = time.monotonic()
        assert (await http.get("/v1/me", headers=token)).status_code == 200  # t = 0
        await asyncio.sleep(0.5)
        assert (await http.get("/v1/me", headers=token)).status_code == 200  # t = 0.5
        refused = await http.get("/v1/me", headers=token)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        await asyncio.sleep(max(0.0, started + 1.15 - time.monotonic()))
        # The first request has left the trailing second, the second has not: exactly one
        # slot is free (a fixed window would have given two at its edge).
        codes = [(await http.get("/v1/me", headers=token)).status_code for _ in range(2)]
        assert time.monotonic() - started < 1.45, "too slow to tell the window's shape"
        assert codes == [200, 429]


async def test_the_fallback_is_counted_once_per_request(
    context_factory: Any, dedicated_redis: DedicatedRedis, tenant: str, make_token: TokenFactory
) -> None:
    app = _limited_app(context_factory, per_subject="50/minute", redis_url=dedicated_redis.url)
    dedicated_redis.stop()

    def fallbacks() -> float:
        value = REGISTRY.get_sample_value("agent_redis_fallback_total", {"feature": "rate_limit"})
        return value or 0.0

    before = fallbacks()
    async with client_for(app) as http:
        for _ in range(3):
            assert (await http.get("/v1/me", headers=bearer(make_token(tenant)))).status_code == 200
    assert fallbacks() - before == 3


async def test_concurrent_checks_share_a_script_call_and_count_exactly(
    context_factory: Any, tenant: str, make_token: TokenFactory
) -> None:
    # Checks that wait together go to Redis in one script call, taken in turn: of 12
    # concurrent requests of one caller with 5 left exactly 5 pass, each told a different
    # remaining count, and the tenant's log counts only those 5.
    app = _limited_app(context_factory, per_subject="5/minute", per_tenant="7/minute")
    alice, bob = make_token(tenant, sub="alice"), make_token(tenant, sub="bob")
    limiter = app.state.context.rate_limiter
    async with client_for(app) as http:
        before = limiter._batcher.statements
        responses = await asyncio.gather(
            *(http.get("/v1/me", headers=bearer(alice)) for _ in range(12))
        )
        assert limiter._batcher.statements - before < 12  # fewer calls than requests
        passed = [r for r in responses if r.status_code == 200]
        assert len(passed) == 5
        assert sorted(r.headers["RateLimit-Remaining"] for r in passed) == ["0", "1", "2", "3", "4"]
        assert {r.status_code for r in responses} == {200, 429}
        codes = [(await http.get("/v1/me", headers=bearer(bob))).status_code for _ in range(3)]
        assert codes == [200, 200, 429]  # the tenant's 7: alice's 5 and bob's 2

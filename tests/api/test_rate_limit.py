"""Rate limits: moving window per subject and per tenant, 429 with headers, and the declared
fallback (an in-process limiter) when Redis is down or stalled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.main import create_app
from app.settings import RateLimitSettings, RedisSettings
from tests.conftest import TokenFactory, bearer, client_for, make_settings
from tests.fixtures_redis import DedicatedRedis


def _limited_app(
    context_factory: Any, per_subject: str, per_tenant: str = "1000/minute", **urls: str
) -> Any:
    settings = make_settings(
        rate_limit=RateLimitSettings(per_subject=per_subject, per_tenant=per_tenant),
        redis=RedisSettings(socket_timeout_seconds=0.2, connect_timeout_seconds=0.2),
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

"""Blast-radius limits against the real Valkey: calls per window, amounts that add up across
calls and sessions, atomic reservations under concurrency, release, and failing closed."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.policy import limits
from app.policy.engine import evaluate
from app.policy.limits import CallScope
from app.policy.rules import Decision, PolicySpec
from app.redis_client import create_redis
from app.settings import RedisSettings
from app.tools.spec import SideEffect
from tests.fixtures_redis import DedicatedRedis

DAY = 86_400


# Generous timeouts: these tests are about counting, not about a slow Redis (the suite runs
# beside others on a small machine); the fault tests below set their own.
PATIENT = RedisSettings(socket_timeout_seconds=5, connect_timeout_seconds=5)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(PATIENT, redis_url)
    yield client
    await client.aclose()


def _policy(*limit_list: dict[str, Any]) -> PolicySpec:
    return PolicySpec.model_validate(
        {"rules": [{"tool": ".*", "decision": "allow"}], "limits": list(limit_list)}
    )


def _refunds(
    cap: float = 100, per: str = "tenant", over: str = "require_approval"
) -> dict[str, Any]:
    return {
        "tool": "refund_order",
        "sum_argument": "amount",
        "max_total": cap,
        "window_seconds": DAY,
        "per": per,
        "over_limit": over,
    }


def _scope(tenant: str, session: str = "s1", subject: str = "alice") -> CallScope:
    return CallScope(tenant_id=tenant, session_id=session, subject=subject)


async def test_calls_per_window_per_tool_per_tenant(redis: Redis, tenant: str) -> None:
    policy = _policy({"tool": "delete_.*", "max_calls": 3, "window_seconds": 1, "per": "tenant"})
    results = [
        await limits.reserve(redis, policy, tool, {}, _scope(tenant, session=f"s{n}"))
        for n, tool in enumerate(["delete_user", "delete_order", "delete_user", "delete_user"])
    ]
    assert [r.decision for r in results] == [Decision.ALLOW] * 3 + [Decision.DENY]
    [breach] = results[3].breaches
    assert (breach.limit_index, breach.used, breach.cap) == (0, "3", "3")
    assert results[3].reservation is None
    # Another tenant, and a tool the limit does not count, are not affected.
    other = await limits.reserve(redis, policy, "delete_user", {}, _scope(tenant + "-b"))
    assert other.decision is Decision.ALLOW
    uncounted = await limits.reserve(redis, policy, "lookup_order", {}, _scope(tenant))
    assert (uncounted.decision, uncounted.applied) == (Decision.ALLOW, ())


async def test_the_window_slides(redis: Redis, tenant: str) -> None:
    policy = _policy({"tool": "delete_user", "max_calls": 3, "window_seconds": 1})
    started = time.monotonic()
    for _ in range(3):
        assert (await limits.reserve(redis, policy, "delete_user", {}, _scope(tenant))).allowed
        await asyncio.sleep(0.3)
    assert not (await limits.reserve(redis, policy, "delete_user", {}, _scope(tenant))).allowed
    await asyncio.sleep(started + 1.15 - time.monotonic())
    # Only the first call has left the window (plus one bucket): one call fits again.
    assert (await limits.reserve(redis, policy, "delete_user", {}, _scope(tenant))).allowed
    assert not (await limits.reserve(redis, policy, "delete_user", {}, _scope(tenant))).allowed


async def test_split_refunds_add_up(redis: Redis, tenant: str) -> None:
    policy = _policy(_refunds(per="session"))
    first = await limits.reserve(redis, policy, "refund_order", {"amount": 60.0}, _scope(tenant))
    second = await limits.reserve(redis, policy, "refund_order", {"amount": 50}, _scope(tenant))
    assert (first.decision, second.decision) == (Decision.ALLOW, Decision.REQUIRE_APPROVAL)
    assert first.used == ((0, "0"),)
    [breach] = second.breaches
    assert (breach.used, breach.requested, breach.cap) == ("60", "50", "100")
    exactly_the_cap = await limits.reserve(
        redis, policy, "refund_order", {"amount": 40}, _scope(tenant)
    )
    assert exactly_the_cap.decision is Decision.ALLOW
    cent = await limits.reserve(redis, policy, "refund_order", {"amount": 0.01}, _scope(tenant))
    assert cent.decision is Decision.REQUIRE_APPROVAL
    # A limit per session: another session of the same tenant has its own total.
    other = await limits.reserve(
        redis, policy, "refund_order", {"amount": 100}, _scope(tenant, session="s2")
    )
    assert other.decision is Decision.ALLOW


@pytest.mark.parametrize("per", ["subject", "tenant"])
async def test_parallel_sessions_share_a_subject_or_tenant_limit(
    redis: Redis, tenant: str, per: str
) -> None:
    policy = _policy(_refunds(per=per))
    a, b = _scope(tenant, session="a"), _scope(tenant, session="b")
    assert (await limits.reserve(redis, policy, "refund_order", {"amount": 60}, a)).allowed
    assert not (await limits.reserve(redis, policy, "refund_order", {"amount": 50}, b)).allowed
    other_subject = _scope(tenant, session="c", subject="bob")
    result = await limits.reserve(redis, policy, "refund_order", {"amount": 50}, other_subject)
    assert result.allowed is (per == "subject")


async def test_concurrent_reservations_never_pass_the_cap(redis: Redis, tenant: str) -> None:
    policy = _policy(_refunds(over="deny"))
    results = await asyncio.gather(
        *(
            limits.reserve(
                redis,
                policy,
                "refund_order",
                {"amount": 10},
                _scope(tenant, session=f"s{n}"),
                timeout_seconds=10,
            )
            for n in range(50)
        )
    )
    assert not any(r.store_unavailable for r in results)
    granted = [r for r in results if r.decision is Decision.ALLOW]
    assert len(granted) == 10
    assert {r.decision for r in results if r not in granted} == {Decision.DENY}
    [entry] = granted[0].reservation.entries if granted[0].reservation else ()
    stored = await redis.hgetall(entry.key)
    assert sum(int(units) for units in stored.values()) == 100 * 1_000_000


async def test_release_gives_capacity_back_once(redis: Redis, tenant: str) -> None:
    policy = _policy(_refunds(over="deny"))
    scope = _scope(tenant)
    big = await limits.reserve(redis, policy, "refund_order", {"amount": 95}, scope)
    assert big.reservation is not None
    small = await limits.reserve(redis, policy, "refund_order", {"amount": 10}, scope)
    assert small.decision is Decision.DENY
    assert await limits.release(redis, big.reservation) is True
    assert await limits.release(redis, big.reservation) is False  # idempotent
    for _ in range(10):
        assert (await limits.reserve(redis, policy, "refund_order", {"amount": 10}, scope)).allowed
    assert not (await limits.reserve(redis, policy, "refund_order", {"amount": 1}, scope)).allowed


async def test_an_approved_call_is_recorded_but_only_deny_limits_bind(
    redis: Redis, tenant: str
) -> None:
    """≤ $100 a day without approval, ≤ $500 at all: the two limits share one counter."""
    policy = _policy(_refunds(100, over="require_approval"), _refunds(500, over="deny"))
    scope = _scope(tenant)
    assert (await limits.reserve(redis, policy, "refund_order", {"amount": 80}, scope)).allowed
    unapproved = await limits.reserve(redis, policy, "refund_order", {"amount": 50}, scope)
    assert unapproved.decision is Decision.REQUIRE_APPROVAL
    approved = await limits.reserve(
        redis, policy, "refund_order", {"amount": 50}, scope, approved=True
    )
    assert approved.decision is Decision.ALLOW
    assert approved.reservation is not None and len(approved.reservation.entries) == 1
    too_much = await limits.reserve(
        redis, policy, "refund_order", {"amount": 400}, scope, approved=True
    )
    assert too_much.decision is Decision.DENY
    assert [b.limit_index for b in too_much.breaches] == [1]
    assert too_much.breaches[0].used == "130"


@pytest.mark.parametrize("amount", [None, "50", math.nan, math.inf, -10, True, [50]])
async def test_an_amount_that_cannot_be_measured_fails_closed(
    redis: Redis, tenant: str, amount: Any
) -> None:
    policy = _policy(_refunds())
    arguments = {} if amount is None else {"amount": amount}
    result = await limits.reserve(redis, policy, "refund_order", arguments, _scope(tenant))
    assert result.decision is Decision.REQUIRE_APPROVAL
    assert result.reservation is None
    assert "not a measurable amount" in result.breaches[0].reason


async def test_redis_down_fails_closed(dedicated_redis: DedicatedRedis, tenant: str) -> None:
    client = create_redis(RedisSettings(), dedicated_redis.url)
    policy = _policy(_refunds(over="require_approval"), {"tool": "delete_.*", "max_calls": 5,
                                                         "window_seconds": 60})  # fmt: skip
    try:
        assert (await limits.reserve(client, policy, "delete_user", {}, _scope(tenant))).allowed
        dedicated_redis.stop()
        refund = await limits.reserve(client, policy, "refund_order", {"amount": 1}, _scope(tenant))
        delete = await limits.reserve(client, policy, "delete_user", {}, _scope(tenant))
        assert (refund.decision, delete.decision) == (Decision.REQUIRE_APPROVAL, Decision.DENY)
        assert refund.store_unavailable and delete.store_unavailable
        assert refund.reservation is None and delete.reservation is None
        # A reviewer's approval is what a require_approval limit asks for; a deny limit
        # still cannot be checked, so it still denies.
        approved = await limits.reserve(
            client, policy, "refund_order", {"amount": 1}, _scope(tenant), approved=True
        )
        assert (approved.decision, approved.store_unavailable) == (Decision.ALLOW, True)
        approved_delete = await limits.reserve(
            client, policy, "delete_user", {}, _scope(tenant), approved=True
        )
        assert approved_delete.decision is Decision.DENY
        # A call no limit counts does not need Redis at all.
        lookup = await limits.reserve(client, policy, "lookup_order", {}, _scope(tenant))
        assert lookup.decision is Decision.ALLOW
    finally:
        await client.aclose()


async def test_a_stalled_redis_fails_closed_within_the_timeout(
    dedicated_redis: DedicatedRedis, tenant: str
) -> None:
    client = create_redis(RedisSettings(socket_timeout_seconds=5), dedicated_redis.url)
    policy = _policy({"tool": "delete_.*", "max_calls": 5, "window_seconds": 60})
    try:
        assert (await limits.reserve(client, policy, "delete_user", {}, _scope(tenant))).allowed
        dedicated_redis.pause()
        started = time.monotonic()
        result = await limits.reserve(
            client, policy, "delete_user", {}, _scope(tenant), timeout_seconds=0.3
        )
        assert time.monotonic() - started < 2
        assert (result.decision, result.store_unavailable) == (Decision.DENY, True)
    finally:
        dedicated_redis.resume()
        await client.aclose()


async def test_rules_then_limits_make_one_audited_decision(redis: Redis, tenant: str) -> None:
    policy = PolicySpec.model_validate(
        {
            "rules": [
                {"tool": "refund_order", "when": {"amount": {"max": 100}}, "decision": "allow"}
            ],
            "limits": [_refunds()],
        }
    )
    scope = _scope(tenant)
    for amount, decision in [(70, Decision.ALLOW), (70, Decision.REQUIRE_APPROVAL)]:
        ruled = evaluate(policy, "refund_order", SideEffect.WRITE, {"amount": amount})
        final = ruled.with_limits(
            await limits.reserve(redis, policy, "refund_order", {"amount": amount}, scope)
        )
        assert final.decision is decision
    audit = final.audit()
    assert audit["rule_index"] == 0 and audit["limits"]["breaches"][0]["used"] == "70"

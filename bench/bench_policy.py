"""Policy benchmark: the injection detector's rates and cost, the rule engine's cost per tool
call, and the Redis round trip of a limit reservation.

  .venv/bin/python bench/bench_policy.py [--calls 50000] [--reservations 2000]

a. injection detector on app/policy/corpus.py: detection rate (known phrasings and
   paraphrases), benign flag rate, and scan cost per output (µs, p50/p99);
b. `engine.evaluate` on a typical 10-rule policy over a mix of allowed, denied and
   approval-needing calls: µs per call (p50/p99, each call timed on its own; the timer adds
   ~0.1 µs), and the mean from one untimed loop;
c. `limits.reserve` against the embedded Valkey (or REDIS_URL): one amount limit and one
   call limit applying, ms per reservation (p50/p99), sequential; and `limits.release`.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import uvloop
from common import machine, pct

from app.embedded import resolve_redis_url
from app.policy import limits
from app.policy.corpus import benign_outputs, injections
from app.policy.engine import evaluate
from app.policy.injection import scan
from app.policy.limits import CallScope
from app.policy.rules import PolicySpec
from app.redis_client import create_redis
from app.settings import Settings
from app.tools.spec import SideEffect

TYPICAL_POLICY: dict[str, Any] = {
    "rules": [
        {"tool": "delete_.*", "decision": "deny", "priority": 1, "reason": "no deletes"},
        {"tool": "lookup_.*", "decision": "allow", "priority": 10},
        {"tool": "search_(orders|customers)", "decision": "allow", "priority": 10},
        {"tool": "refund_order", "when": {"amount": {"min": 0.01, "max": 100},
                                          "order_id": {"pattern": "ord_[0-9]{4,8}"}},
         "decision": "allow", "priority": 20},
        {"tool": "refund_order", "decision": "require_approval", "priority": 30},
        {"tool": "update_customer", "when": {"field": {"in": ["email", "phone", "address"]}},
         "decision": "allow", "priority": 20},
        {"tool": "send_email", "when": {"to": {"pattern": "[^@\\s]+@[a-z0-9.-]+\\.[a-z]{2,}"},
                                        "template": {"in": ["shipped", "refunded", "apology"]}},
         "decision": "allow", "priority": 20},
        {"tool": "cancel_order", "when": {"confirmed": {"equals": True}}, "decision": "allow",
         "priority": 20},
        {"tool": "cancel_order", "decision": "require_approval", "priority": 30},
        {"tool": "create_ticket", "when": {"priority": {"in": ["low", "normal", "high"]}},
         "decision": "allow", "priority": 40},
    ],
    "default": "deny",
    "limits": [
        {"tool": "refund_order", "sum_argument": "amount", "max_total": 1_000_000,
         "window_seconds": 86_400, "per": "tenant", "over_limit": "require_approval"},
        {"tool": "refund_order", "max_calls": 1_000_000, "window_seconds": 60, "per": "session"},
    ],
}  # fmt: skip

CALLS: list[tuple[str, SideEffect, dict[str, Any]]] = [
    ("lookup_order", SideEffect.READ, {"order_id": "ord_1001"}),
    ("refund_order", SideEffect.WRITE, {"order_id": "ord_1001", "amount": 25.0}),
    ("refund_order", SideEffect.WRITE, {"order_id": "ord_1001", "amount": 250.0}),
    ("refund_order", SideEffect.WRITE, {"order_id": "bogus", "amount": 5}),
    ("send_email", SideEffect.WRITE, {"to": "ada@example.com", "template": "shipped"}),
    ("update_customer", SideEffect.WRITE, {"field": "email", "value": "a@b.example"}),
    ("cancel_order", SideEffect.WRITE, {"order_id": "ord_1002"}),
    ("create_ticket", SideEffect.WRITE, {"priority": "urgent"}),
    ("delete_customer", SideEffect.DESTRUCTIVE, {"customer_id": "cus_1"}),
    ("transfer_funds", SideEffect.WRITE, {"amount": 10}),
]


def micros(nanoseconds: list[int]) -> tuple[float, float]:
    values = [n / 1000 for n in nanoseconds]
    return pct(values, 50), pct(values, 99)


def bench_detector() -> None:
    benign, attacks = benign_outputs(), injections()
    flagged = sum(1 for text in benign if scan(text))
    known = [a for a in attacks if a.known]
    paraphrased = [a for a in attacks if not a.known]
    caught_known = sum(1 for a in known if scan(a.text))
    caught_paraphrased = sum(1 for a in paraphrased if scan(a.text))
    timings = []
    for _ in range(20):
        for text in benign:
            started = time.perf_counter_ns()
            scan(text)
            timings.append(time.perf_counter_ns() - started)
    p50, p99 = micros(timings)
    big = "\n".join(benign)[:16_384]  # one output at the default 16 KiB cap
    big_timings = []
    for _ in range(200):
        started = time.perf_counter_ns()
        scan(big)
        big_timings.append(time.perf_counter_ns() - started)
    big_p50, big_p99 = micros(big_timings)
    caught = caught_known + caught_paraphrased
    print("a. injection detector (app/policy/corpus.py)")
    print(
        f"   detection rate {caught / len(attacks):.1%} ({caught}/{len(attacks)}): "
        f"known phrasings {caught_known}/{len(known)}, paraphrases {caught_paraphrased}/{len(paraphrased)}"
    )
    print(f"   benign flag rate {flagged / len(benign):.1%} ({flagged}/{len(benign)})")
    print(
        f"   scan µs per benign output (mean {sum(map(len, benign)) / len(benign):.0f} chars): p50 {p50:.1f}  p99 {p99:.1f}"
    )
    print(f"   scan µs per 16 KiB output: p50 {big_p50:.0f}  p99 {big_p99:.0f}")


def bench_engine(calls: int) -> None:
    policy = PolicySpec.model_validate(TYPICAL_POLICY)
    for tool, side_effect, arguments in CALLS * 100:  # warm-up
        evaluate(policy, tool, side_effect, arguments)
    timings = []
    decisions: dict[str, int] = {}
    for n in range(calls):
        tool, side_effect, arguments = CALLS[n % len(CALLS)]
        started = time.perf_counter_ns()
        decision = evaluate(policy, tool, side_effect, arguments)
        timings.append(time.perf_counter_ns() - started)
        decisions[decision.decision.value] = decisions.get(decision.decision.value, 0) + 1
    started = time.perf_counter_ns()
    for n in range(calls):
        tool, side_effect, arguments = CALLS[n % len(CALLS)]
        evaluate(policy, tool, side_effect, arguments)
    mean = (time.perf_counter_ns() - started) / calls / 1000
    p50, p99 = micros(timings)
    validate = []
    for _ in range(200):
        started = time.perf_counter_ns()
        PolicySpec.model_validate(TYPICAL_POLICY)
        validate.append(time.perf_counter_ns() - started)
    print(f"b. engine.evaluate, 10-rule policy, {calls} calls over {len(CALLS)} kinds {decisions}")
    print(f"   µs per call: p50 {p50:.2f}  p99 {p99:.2f}  mean {mean:.2f} (untimed loop)")
    print(
        f"   validating the policy (checks every pattern compiles): p50 {pct(validate, 50) / 1000:.0f} µs"
    )


async def bench_limits(settings: Settings, reservations: int) -> None:
    redis = create_redis(settings.redis, resolve_redis_url(settings))
    policy = PolicySpec.model_validate(TYPICAL_POLICY)
    tenant = f"bench-policy-{uuid.uuid4().hex[:8]}"
    scope = CallScope(tenant_id=tenant, session_id="s1", subject="bench")
    arguments = {"order_id": "ord_1001", "amount": 1.0}
    try:
        for _ in range(100):  # warm-up (connection, script cache)
            await limits.reserve(redis, policy, "refund_order", arguments, scope)
        reserve_ns, release_ns, refused = [], [], 0
        for _ in range(reservations):
            started = time.perf_counter_ns()
            check = await limits.reserve(redis, policy, "refund_order", arguments, scope)
            reserve_ns.append(time.perf_counter_ns() - started)
            if check.reservation is None:
                refused += 1
                continue
            started = time.perf_counter_ns()
            await limits.release(redis, check.reservation)
            release_ns.append(time.perf_counter_ns() - started)
        r50, r99 = micros(reserve_ns)
        l50, l99 = micros(release_ns)
        print(
            f"c. limits.reserve against Valkey, 2 limits applying, {reservations} sequential ({refused} refused)"
        )
        print(f"   ms per reservation: p50 {r50 / 1000:.3f}  p99 {r99 / 1000:.3f}")
        print(f"   ms per release:     p50 {l50 / 1000:.3f}  p99 {l99 / 1000:.3f}")
    finally:
        keys = [key async for key in redis.scan_iter(match=f"agent:policy:limit:{tenant}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--reservations", type=int, default=2000)
    args = parser.parse_args()
    print(
        f"# policy benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {machine()}"
    )
    bench_detector()
    bench_engine(args.calls)
    uvloop.run(bench_limits(Settings(), args.reservations))

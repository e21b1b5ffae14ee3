"""Blast-radius limits kept in Redis, shared by every worker: calls per window, and totals of
an argument per window (refunds ≤ $100 a day), per session, subject or tenant.

`reserve` checks and records a call in one Lua script, so concurrent sessions cannot
together pass a cap, and splitting an amount over several calls adds up. `release` gives
a reservation back (the call did not run: denied, rejected, failed before any effect);
it is idempotent. A call never released stays counted — the safe direction after a crash,
as is a reservation whose reply was lost (counted in Redis, refused here).

Window: 60 buckets per window in one Redis hash per (tenant, limit, scope). The oldest
bucket counts in full, so no window-long interval ever passes the cap; a limit may bind up
to 1/60 of its window longer than exactly.

Fails closed: when Redis is unreachable, slow or errors, every limit that applies is
treated as exceeded — the call gets the limit's `over_limit` decision (require_approval or
deny), never allow. An argument a limit cannot measure (absent, not a finite number,
negative) is treated the same way.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any
from urllib.parse import quote

from redis.asyncio import Redis

from app.policy.decision import LimitBreach, LimitCheck, Reservation, ReservedUnits, strictest
from app.policy.engine import finite_number
from app.policy.rules import Decision, Limit, LimitScope, PolicySpec

logger = logging.getLogger(__name__)

BUCKETS_PER_WINDOW = 60
MICRO_UNITS = Decimal(1_000_000)  # amounts are recorded as integer millionths
MAX_UNITS = 2**52  # Lua numbers are doubles: exact below 2**53
KEY_PREFIX = "agent:policy"

# KEYS: one hash per distinct counter. ARGV: counters, checks, then per counter
# (units, bucket_ms, buckets counted besides the current one, ttl_ms), then per check
# (counter index, cap, enforced 0|1). Returns {1 if recorded, totals..., buckets..., over...}.
_RESERVE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counters, checks = tonumber(ARGV[1]), tonumber(ARGV[2])
local totals, buckets = {}, {}
for i = 1, counters do
  local base = 2 + (i - 1) * 4
  local bucket = math.floor(now_ms / tonumber(ARGV[base + 2]))
  local oldest = bucket - tonumber(ARGV[base + 3])
  local fields = redis.call('HGETALL', KEYS[i])
  local total, stale = 0, {}
  for j = 1, #fields, 2 do
    if tonumber(fields[j]) < oldest then
      stale[#stale + 1] = fields[j]
    else
      total = total + tonumber(fields[j + 1])
    end
  end
  if #stale > 0 then
    redis.call('HDEL', KEYS[i], unpack(stale))
  end
  totals[i], buckets[i] = total, bucket
end
local over = {}
local first_check = 2 + counters * 4
for c = 1, checks do
  local base = first_check + (c - 1) * 3
  local i = tonumber(ARGV[base + 1])
  local units = tonumber(ARGV[2 + (i - 1) * 4 + 1])
  if ARGV[base + 3] == '1' and totals[i] + units > tonumber(ARGV[base + 2]) then
    over[#over + 1] = c
  end
end
local reply = {#over == 0 and 1 or 0}
for i = 1, counters do
  local base = 2 + (i - 1) * 4
  if #over == 0 then
    redis.call('HINCRBY', KEYS[i], string.format('%d', buckets[i]), ARGV[base + 1])
    redis.call('PEXPIRE', KEYS[i], ARGV[base + 4])
  end
  reply[#reply + 1] = totals[i]
end
for i = 1, counters do
  reply[#reply + 1] = buckets[i]
end
for _, c in ipairs(over) do
  reply[#reply + 1] = c
end
return reply
"""

# KEYS: the reservation's release marker, then its counters. ARGV: ttl_ms, then per
# counter (bucket, units). A bucket already pruned has left the window: nothing to give back.
_RELEASE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
for i = 2, #KEYS do
  local bucket, units = ARGV[(i - 2) * 2 + 2], tonumber(ARGV[(i - 2) * 2 + 3])
  if redis.call('HEXISTS', KEYS[i], bucket) == 1 then
    if redis.call('HINCRBY', KEYS[i], bucket, -units) <= 0 then
      redis.call('HDEL', KEYS[i], bucket)
    end
  end
end
return 1
"""


@dataclass(frozen=True)
class CallScope:
    """Whose call this is: the ids a limit's `per` picks from."""

    tenant_id: str
    session_id: str
    subject: str

    def scope_id(self, per: LimitScope) -> str:
        match per:
            case LimitScope.SESSION:
                return self.session_id
            case LimitScope.SUBJECT:
                return self.subject
            case LimitScope.TENANT:
                return ""


@dataclass(frozen=True)
class _Check:
    limit_index: int
    limit: Limit
    counter: int  # index into the distinct counters
    units: int
    cap: int
    enforced: bool


async def reserve(
    redis: Redis,
    policy: PolicySpec,
    tool_name: str,
    arguments: Mapping[str, Any],
    scope: CallScope,
    *,
    approved: bool = False,
    timeout_seconds: float = 1.0,
) -> LimitCheck:
    """Check every limit of `policy` that counts `tool_name` and, if all hold, record the call.

    Call it after the rules allowed the call (or after a reviewer approved it: then
    `approved=True`, and limits whose `over_limit` is require_approval are recorded but not
    enforced — the approval was that requirement; deny limits still bind). Nothing is
    recorded unless the result allows the call. Never raises for a Redis failure: fails
    closed (see the module docstring).
    """
    applicable = policy.limits_for(tool_name)
    if not applicable:
        return LimitCheck(Decision.ALLOW)
    applied = tuple(index for index, _ in applicable)
    keys: list[str] = []
    key_units: list[int] = []
    key_bucket_ms: list[int] = []
    checks: list[_Check] = []
    unmeasurable: list[LimitBreach] = []
    for index, limit in applicable:
        enforced = not (approved and limit.over_limit == "require_approval")
        units = _units(limit, arguments)
        if units is None:
            if enforced:
                unmeasurable.append(
                    _breach(index, limit, f"`{limit.sum_argument}` is not a measurable amount")
                )
            continue
        key = _counter_key(scope, limit)
        if key not in keys:
            keys.append(key)
            key_units.append(units)
            key_bucket_ms.append(_bucket_ms(limit))
        checks.append(_Check(index, limit, keys.index(key), units, _cap(limit), enforced))
    if unmeasurable:
        return LimitCheck(_refusal(unmeasurable), applied, tuple(unmeasurable))
    if not checks:
        return LimitCheck(Decision.ALLOW, applied)

    ttl_ms = [bucket_ms * (BUCKETS_PER_WINDOW + 2) for bucket_ms in key_bucket_ms]
    arguments_out: list[int | str] = [len(keys), len(checks)]
    for units, bucket_ms, ttl in zip(key_units, key_bucket_ms, ttl_ms, strict=True):
        arguments_out += [units, bucket_ms, BUCKETS_PER_WINDOW, ttl]
    for check in checks:
        arguments_out += [check.counter + 1, check.cap, int(check.enforced)]
    try:
        async with asyncio.timeout(timeout_seconds):
            reply = await redis.register_script(_RESERVE)(keys=keys, args=arguments_out)
    except Exception as exc:  # any failure of the store: fail closed
        logger.warning("policy limits: Redis unavailable, failing closed: %r", exc)
        breaches = [
            _breach(c.limit_index, c.limit, "limit store unavailable: failing closed")
            for c in checks
            if c.enforced
        ]
        return LimitCheck(_refusal(breaches), applied, tuple(breaches), store_unavailable=True)

    recorded = reply[0] == 1
    totals = [int(total) for total in reply[1 : 1 + len(keys)]]
    buckets = [int(bucket) for bucket in reply[1 + len(keys) : 1 + 2 * len(keys)]]
    over = [checks[int(c) - 1] for c in reply[1 + 2 * len(keys) :]]
    if not recorded:
        breaches = [
            _breach(
                c.limit_index,
                c.limit,
                _over_text(c, totals[c.counter]),
                used=_shown(c.limit, totals[c.counter]),
                requested=_shown(c.limit, c.units),
                cap=_shown(c.limit, c.cap),
            )
            for c in over
        ]
        return LimitCheck(_refusal(breaches), applied, tuple(breaches))
    reservation = Reservation(
        reservation_id=uuid.uuid4().hex,
        entries=tuple(
            ReservedUnits(key, bucket, units)
            for key, bucket, units in zip(keys, buckets, key_units, strict=True)
        ),
        ttl_ms=max(ttl_ms),
    )
    used = tuple((c.limit_index, _shown(c.limit, totals[c.counter])) for c in checks)
    return LimitCheck(Decision.ALLOW, applied, reservation=reservation, used=used)


async def release(redis: Redis, reservation: Reservation, *, timeout_seconds: float = 1.0) -> bool:
    """Give `reservation` back. True if this call gave it back; False if it was given back
    before, or Redis failed (then it stays counted until its window passes: the safe way)."""
    keys = [f"{KEY_PREFIX}:released:{reservation.reservation_id}"]
    arguments: list[int | str] = [reservation.ttl_ms]
    for entry in reservation.entries:
        keys.append(entry.key)
        arguments += [str(entry.bucket), entry.units]
    try:
        async with asyncio.timeout(timeout_seconds):
            released = await redis.register_script(_RELEASE)(keys=keys, args=arguments)
    except Exception as exc:
        logger.warning("policy limits: could not release %s: %r", reservation.reservation_id, exc)
        return False
    return bool(released == 1)


def _units(limit: Limit, arguments: Mapping[str, Any]) -> int | None:
    """What one call adds: 1 for a call limit; the amount in millionths (rounded up) for an
    amount limit, or None when there is no non-negative finite amount to add."""
    if limit.sum_argument is None:
        return 1
    amount = finite_number(arguments.get(limit.sum_argument))
    if amount is None or amount < 0:
        return None
    units = (Decimal(str(amount)) * MICRO_UNITS).to_integral_value(rounding=ROUND_CEILING)
    return min(int(units), MAX_UNITS)


def _cap(limit: Limit) -> int:
    if limit.max_calls is not None:
        return limit.max_calls
    assert limit.max_total is not None
    return int((Decimal(str(limit.max_total)) * MICRO_UNITS).to_integral_value(ROUND_FLOOR))


def _bucket_ms(limit: Limit) -> int:
    return -(-limit.window_seconds * 1000 // BUCKETS_PER_WINDOW)


def _counter_key(scope: CallScope, limit: Limit) -> str:
    """One counter per (tenant, what is counted, window, scope): limits that agree on all of
    these share it, whatever their caps, so "≤ $100 needs no approval, ≤ $500 at all" add up
    the same refunds. Parts are %-encoded so no two parts can run together."""
    kind = "calls" if limit.sum_argument is None else f"sum:{limit.sum_argument}"
    parts = (
        scope.tenant_id,
        limit.tool,
        kind,
        str(limit.window_seconds),
        limit.per.value,
        scope.scope_id(limit.per),
    )
    return f"{KEY_PREFIX}:limit:" + ":".join(quote(part, safe="") for part in parts)


def _refusal(breaches: list[LimitBreach]) -> Decision:
    return strictest(*(breach.decision for breach in breaches))


def _breach(index: int, limit: Limit, reason: str, **numbers: str) -> LimitBreach:
    return LimitBreach(
        index,
        limit.tool,
        limit.per.value,
        Decision(limit.over_limit),
        f"limit {index} ({_describe(limit)}): {reason}",
        **numbers,
    )


def _describe(limit: Limit) -> str:
    if limit.max_calls is not None:
        what = f"{limit.max_calls} calls"
    else:
        what = f"`{limit.sum_argument}` total {limit.max_total}"
    return f"`{limit.tool}` ≤ {what} per {limit.per.value} in {limit.window_seconds}s"


def _over_text(check: _Check, used: int) -> str:
    if check.limit.max_calls is not None:
        return f"{used} calls already in the window"
    return (
        f"{_shown(check.limit, used)} already in the window, "
        f"{_shown(check.limit, check.units)} more would pass it"
    )


def _shown(limit: Limit, units: int) -> str:
    if limit.max_calls is not None:
        return str(units)
    return format((Decimal(units) / MICRO_UNITS).normalize(), "f")

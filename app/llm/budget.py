"""Per-tenant, per-UTC-day token and cost budgets, enforced before every provider call.

Before a call the gateway reserves an estimate (the request's input tokens, estimated, plus
its `max_tokens`; the cost of that at the model's input/output prices) with one Lua script
that checks `used + reserved + estimate <= budget` and adds the estimate to `reserved`
atomically — so concurrent sessions of one tenant, on any number of workers, cannot
together overspend. After the call the reservation is settled: `reserved -= estimate`,
`used += actual`. Keys expire two days after their day.

Redis unreachable with a budget configured: the call is refused as a transient
`BudgetUnavailable` (the session backs off and retries) — a budget never fails open.
Without a budget configured nothing is reserved and Redis is not touched.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from redis.asyncio import Redis

from app.llm.model import ModelRequest

# KEYS[1] tokens hash, KEYS[2] micro-dollars hash; fields `used`, `reserved`.
# ARGV: token estimate, cost estimate (micro-USD), token budget (-1: none), cost budget, ttl
_RESERVE = """
local tokens_used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local tokens_reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local cost_used = tonumber(redis.call('HGET', KEYS[2], 'used') or '0')
local cost_reserved = tonumber(redis.call('HGET', KEYS[2], 'reserved') or '0')
local token_estimate = tonumber(ARGV[1])
local cost_estimate = tonumber(ARGV[2])
local token_budget = tonumber(ARGV[3])
local cost_budget = tonumber(ARGV[4])
if token_budget >= 0 and tokens_used + tokens_reserved + token_estimate > token_budget then
  return {0, 'tokens', tokens_used + tokens_reserved}
end
if cost_budget >= 0 and cost_used + cost_reserved + cost_estimate > cost_budget then
  return {0, 'cost', cost_used + cost_reserved}
end
redis.call('HINCRBY', KEYS[1], 'reserved', token_estimate)
redis.call('HINCRBY', KEYS[2], 'reserved', cost_estimate)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {1, '', 0}
"""

_SETTLE = """
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'used', tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[2], 'reserved', -tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[2], 'used', tonumber(ARGV[4]))
return 1
"""

MICRO = Decimal(1_000_000)
KEY_TTL_SECONDS = 2 * 86_400


class TenantBudgetExceeded(Exception):
    def __init__(self, tenant_id: str, kind: str, budget: str) -> None:
        super().__init__(f"tenant {tenant_id} has used its daily {kind} budget ({budget})")
        self.kind = kind


class BudgetUnavailable(Exception):
    """The budget could not be checked (Redis unreachable): refuse for now, retry later."""


@dataclass(frozen=True)
class Reservation:
    keys: tuple[str, str]
    tokens: int
    micro_usd: int


def estimate_input_tokens(request: ModelRequest) -> int:
    """~4 characters a token over everything sent (system, tools, messages)."""
    size = len(request.system) + len(json.dumps(request.messages)) + len(json.dumps(request.tools))
    return size // 4 + 1


class TenantBudgets:
    def __init__(
        self,
        redis: Redis,
        *,
        daily_tokens: int | None,
        daily_cost_usd: float | None,
        timeout_seconds: float = 0.5,
    ) -> None:
        self.redis = redis
        self.daily_tokens = daily_tokens
        self.daily_cost_usd = None if daily_cost_usd is None else Decimal(str(daily_cost_usd))
        self.timeout_seconds = timeout_seconds
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    @property
    def enabled(self) -> bool:
        return self.daily_tokens is not None or self.daily_cost_usd is not None

    @staticmethod
    def keys(tenant_id: str, day: str | None = None) -> tuple[str, str]:
        day = day or datetime.now(UTC).strftime("%Y-%m-%d")
        return f"agent:budget:{tenant_id}:{day}:tokens", f"agent:budget:{tenant_id}:{day}:cost"

    async def reserve(self, tenant_id: str, tokens: int, cost_usd: Decimal) -> Reservation | None:
        if not self.enabled:
            return None
        keys = self.keys(tenant_id)
        micro = int((cost_usd * MICRO).to_integral_value())
        cost_budget = -1 if self.daily_cost_usd is None else int(self.daily_cost_usd * MICRO)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                ok, kind, _ = await self._reserve(
                    keys=list(keys),
                    args=[tokens, micro, self.daily_tokens or -1, cost_budget, KEY_TTL_SECONDS],
                )
        except Exception as exc:
            raise BudgetUnavailable(f"tenant budget check failed: {exc!r}") from exc
        if not ok:
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            budget = (
                f"{self.daily_tokens} tokens" if kind == "tokens" else f"${self.daily_cost_usd}"
            )
            raise TenantBudgetExceeded(tenant_id, kind, budget)
        return Reservation(keys, tokens, micro)

    async def settle(self, reservation: Reservation | None, tokens: int, cost_usd: Decimal) -> None:
        """Release the estimate and count what was really used (best effort: a lost settle
        leaves the estimate reserved until the day's keys expire — never an overspend)."""
        if reservation is None:
            return
        micro = int((cost_usd * MICRO).to_integral_value())
        async with asyncio.timeout(self.timeout_seconds):
            await self._settle(
                keys=list(reservation.keys),
                args=[reservation.tokens, tokens, reservation.micro_usd, micro],
            )

    async def used(self, tenant_id: str) -> tuple[int, Decimal]:
        tokens_key, cost_key = self.keys(tenant_id)
        tokens = await self.redis.hget(tokens_key, "used")
        cost = await self.redis.hget(cost_key, "used")
        return int(tokens or 0), Decimal(int(cost or 0)) / MICRO

"""What a model call costs: USD per million tokens of each kind, per model.

The built-in table covers the current Claude models at list price (prompt-cache writes at
1.25 x input — the 5-minute cache — and reads at 0.1 x); `LLM_PRICES` overrides or adds
entries. A model missing from the table costs 0 and is logged once, so a typo shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from app.llm.model import TokenUsage

logger = logging.getLogger(__name__)
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    @classmethod
    def list_price(cls, input_usd: str, output_usd: str) -> Price:
        base = Decimal(input_usd)
        return cls(base, Decimal(output_usd), base * Decimal("1.25"), base * Decimal("0.1"))


FREE = Price(Decimal(0), Decimal(0), Decimal(0), Decimal(0))

DEFAULT_PRICES: dict[str, Price] = {
    "offline": FREE,
    "claude-opus-4-5": Price.list_price("5", "25"),
    "claude-opus-4-1": Price.list_price("15", "75"),
    "claude-sonnet-4-5": Price.list_price("3", "15"),
    "claude-sonnet-4": Price.list_price("3", "15"),
    "claude-haiku-4-5": Price.list_price("1", "5"),
    "claude-3-5-haiku-latest": Price.list_price("0.8", "4"),
}


class PriceTable:
    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES)
        for model, fields in (overrides or {}).items():
            base = self._prices.get(model, FREE)
            self._prices[model] = Price(
                input=Decimal(str(fields.get("input", base.input))),
                output=Decimal(str(fields.get("output", base.output))),
                cache_write=Decimal(str(fields.get("cache_write", base.cache_write))),
                cache_read=Decimal(str(fields.get("cache_read", base.cache_read))),
            )
        self._unknown_logged: set[str] = set()

    def price(self, model: str) -> Price:
        price = self._prices.get(model)
        if price is None:
            if model not in self._unknown_logged:
                self._unknown_logged.add(model)
                logger.warning(
                    "no price for model %s: its calls count as $0 (set LLM_PRICES)", model
                )
            return FREE
        return price

    def cost(self, model: str, usage: TokenUsage) -> Decimal:
        price = self.price(model)
        return (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_creation_input_tokens * price.cache_write
            + usage.cache_read_input_tokens * price.cache_read
        ) / MILLION

    def cache_savings(self, model: str, usage: TokenUsage) -> Decimal:
        """What prompt caching saved on this call: the cached tokens at the input price,
        minus what writing and reading the cache cost."""
        price = self.price(model)
        cached = usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        uncached_cost = cached * price.input
        cached_cost = (
            usage.cache_creation_input_tokens * price.cache_write
            + usage.cache_read_input_tokens * price.cache_read
        )
        return (uncached_cost - cached_cost) / MILLION

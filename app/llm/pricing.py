"""USD per million tokens (input, output). The gateway issue makes it overridable and adds
cache-token prices; here it gives the runtime's cost budget something real to count."""

from __future__ import annotations

from decimal import Decimal

from app.llm.model import TokenUsage

PRICES_PER_MILLION: dict[str, tuple[Decimal, Decimal]] = {
    "offline": (Decimal(0), Decimal(0)),
    "claude-opus-4-5": (Decimal(5), Decimal(25)),
    "claude-sonnet-4-5": (Decimal(3), Decimal(15)),
    "claude-haiku-4-5": (Decimal(1), Decimal(5)),
}


def cost_usd(model: str, usage: TokenUsage) -> Decimal:
    input_price, output_price = PRICES_PER_MILLION.get(model, (Decimal(0), Decimal(0)))
    return (usage.input_tokens * input_price + usage.output_tokens * output_price) / Decimal(
        1_000_000
    )

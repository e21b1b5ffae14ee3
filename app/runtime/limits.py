"""The session limits checked before every model call, each with its own error code."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from app.runtime.claim import Claimed
from app.sessions.states import SessionStatus


def limit_reached(claimed: Claimed, now: datetime) -> tuple[SessionStatus, str, str] | None:
    """(the status to end with, `error.code`, message) for the first limit reached, else None."""
    limits = claimed.definition.limits
    if claimed.deadline_at is not None and now >= claimed.deadline_at:
        return (
            SessionStatus.TIMED_OUT,
            "deadline_exceeded",
            f"deadline of {limits.deadline_seconds:g}s passed",
        )
    if claimed.turns >= limits.max_turns:
        return SessionStatus.FAILED, "max_turns_exceeded", f"reached max_turns={limits.max_turns}"
    if limits.max_tokens_total is not None and (
        claimed.input_tokens + claimed.output_tokens >= limits.max_tokens_total
    ):
        return (
            SessionStatus.FAILED,
            "token_budget_exceeded",
            f"used the token budget of {limits.max_tokens_total}",
        )
    if limits.max_cost_usd is not None and claimed.cost_usd >= Decimal(str(limits.max_cost_usd)):
        return (
            SessionStatus.FAILED,
            "cost_budget_exceeded",
            f"used the cost budget of ${limits.max_cost_usd}",
        )
    return None

"""The executor's retries: transient failures of idempotent tools are retried with back-off;
nothing of a non-idempotent tool is retried; a timeout of one is an unknown outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.tools.executor import execute
from app.tools.spec import RetryPolicy, ToolContext, ToolSpec, TransientToolError

BASE = 0.05
RETRY = RetryPolicy(max_attempts=3, base_delay_seconds=BASE, max_delay_seconds=1.0)
SCHEMA = {"type": "object"}


def context() -> ToolContext:
    return ToolContext(
        tenant_id="t",
        session_id="ses_x",
        tool_use_id="toolu_x",
        session_factory=None,  # type: ignore[arg-type]  # these tools use no database
        idempotency_key="ses_x:toolu_x",
    )


def flaky(failures: int, calls: list[float]) -> Any:
    """A tool that fails transiently `failures` times, then answers; `calls` get the times."""

    async def run(arguments: dict[str, Any], _context: ToolContext) -> dict[str, Any]:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise TransientToolError(f"busy ({len(calls)})")
        return {"ok": True, "attempt": len(calls)}

    return run


async def test_transient_failures_of_an_idempotent_tool_are_retried_with_growing_waits() -> None:
    calls: list[float] = []
    spec = ToolSpec("flaky", "", SCHEMA, flaky(2, calls), idempotent=True, retry=RETRY)
    outcome = await execute(spec, {}, context())
    assert outcome.status == "succeeded" and outcome.result == {"ok": True, "attempt": 3}
    assert outcome.attempts == 3
    first_wait, second_wait = calls[1] - calls[0], calls[2] - calls[1]
    # base (+ up to base of jitter) before the first retry, twice that before the second
    assert BASE * 0.9 <= first_wait <= 2 * BASE + 0.05
    assert 2 * BASE * 0.9 <= second_wait <= 3 * BASE + 0.05


async def test_an_idempotent_tool_that_keeps_failing_stops_at_max_attempts() -> None:
    calls: list[float] = []
    spec = ToolSpec("flaky", "", SCHEMA, flaky(10, calls), idempotent=True, retry=RETRY)
    outcome = await execute(spec, {}, context())
    assert outcome.status == "failed" and outcome.attempts == 3 and len(calls) == 3
    assert "busy (3)" in (outcome.error or "")


async def test_a_transient_failure_of_a_non_idempotent_tool_is_not_retried() -> None:
    calls: list[float] = []
    spec = ToolSpec("flaky", "", SCHEMA, flaky(1, calls), idempotent=False, retry=RETRY)
    outcome = await execute(spec, {}, context())
    assert outcome.status == "failed" and outcome.attempts == 1 and len(calls) == 1


@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_timeout_is_retried_only_when_idempotent_and_unknown_otherwise(
    idempotent: bool,
) -> None:
    calls: list[float] = []

    async def slow(arguments: dict[str, Any], _context: ToolContext) -> str:
        calls.append(time.monotonic())
        await asyncio.sleep(5)
        return "late"

    spec = ToolSpec(
        "slow", "", SCHEMA, slow, idempotent=idempotent, timeout_seconds=0.05, retry=RETRY
    )
    outcome = await execute(spec, {}, context())
    if idempotent:
        assert outcome.status == "failed" and outcome.attempts == 3 and len(calls) == 3
    else:
        assert outcome.status == "unknown" and outcome.attempts == 1 and len(calls) == 1
        assert "outcome is unknown" in outcome.content

"""Turning a model response's `tool_use` blocks into tool-call ledger rows: `started` when
the call will run, or already settled — `denied` (not the agent's tool) or `failed` (its
input does not validate; the model gets the error)."""

from __future__ import annotations

from app.llm.model import ModelResponse
from app.runtime.guard import CONFIDENCE_ARGUMENT, take_confidence
from app.runtime.store import PlannedCall
from app.tools import executor
from app.tools.spec import ToolInputError, ToolSpec


def plan_calls(
    response: ModelResponse,
    tools: dict[str, ToolSpec],
    allowed: list[str],
    confidence_gated: frozenset[str] = frozenset(),
) -> list[PlannedCall]:
    planned = []
    for block in response.tool_uses:
        name, arguments = block["name"], block.get("input", {})
        spec = tools.get(name)
        status, error, confidence = "started", None, None
        if name in confidence_gated and isinstance(arguments, dict):
            arguments, confidence = take_confidence(arguments)
            if confidence is None and CONFIDENCE_ARGUMENT not in block.get("input", {}):
                confidence = response.confidence  # an offline script's turn-level statement
        if name not in allowed or spec is None:
            status, error = "denied", f"tool `{name}` is not available to this agent"
        else:
            try:
                arguments = executor.validate_arguments(spec, arguments)
            except ToolInputError as exc:
                status, error = "failed", str(exc)
        planned.append(
            PlannedCall(
                tool_use_id=block["id"],
                tool=name,
                arguments=arguments if isinstance(arguments, dict) else {"_invalid": arguments},
                status=status,
                idempotent=spec.idempotent if spec else False,
                error=error,
                confidence=confidence,
            )
        )
    return planned

"""Guardrails at tool-call time (DESIGN.md §6): what happens to one validated call.

In order: the agent's policy rules (pure, `app.policy.engine`; deny by default); then the
human gates — a policy `require_approval`, the tool's gate (`approval` always, `confidence`
below its threshold, `escalation`), the built-in `escalate_to_human`, and taint (untrusted
or flagged content in the context makes `write`/`destructive` calls need a reviewer, per
the agent's `untrusted_content`); then, for a call that will run now, the stateful limits
(Redis, reserved atomically; over a limit → its `over_limit` decision). A gated call is
parked for a reviewer; its limits are reserved when it runs, after the approval, and the
rules are evaluated again then (a deny added meanwhile still wins).

How the model states its confidence: every tool with a `confidence` gate gets a required
`confidence` argument (a number from 0 to 1) in the schema the model sees; the platform takes it out
before the arguments are validated and run. Missing or malformed counts as low (the gate
fails closed). An `offline` script's turn-level `confidence` stands in when the argument is
absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from app.agents.schemas import AgentDefinition, UntrustedContent
from app.hitl.schemas import Gate
from app.policy import limits
from app.policy.decision import PolicyDecision, Reservation
from app.policy.engine import evaluate
from app.policy.rules import Decision, PolicySpec
from app.tools.spec import SideEffect, ToolSpec

ESCALATE_TOOL = "escalate_to_human"
CONFIDENCE_ARGUMENT = "confidence"
DEFAULT_CONFIDENCE_THRESHOLD = 0.8
RulingStatus = Literal["started", "denied", "awaiting_approval"]


@dataclass(frozen=True)
class GateFired:
    gate: Literal["approval", "confidence", "escalation"]
    reason: str
    settings: Gate


@dataclass(frozen=True)
class Ruling:
    status: RulingStatus
    reason: str | None
    decision: PolicyDecision
    gate: GateFired | None = None
    reservation: Reservation | None = None

    def audit(self) -> dict[str, Any]:
        data = {"status": self.status, **self.decision.audit()}
        if self.gate is not None:
            data["gate"] = {"type": self.gate.gate, "reason": self.gate.reason}
        return data


@dataclass
class Taint:
    """What untrusted data is in the context: any (provenance) and flagged (detector)."""

    untrusted: bool = False
    flagged: bool = False


def take_confidence(arguments: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The arguments without the platform's `confidence`, and that confidence (None when
    missing or not a finite number from 0 to 1)."""
    if CONFIDENCE_ARGUMENT not in arguments:
        return arguments, None
    rest = {k: v for k, v in arguments.items() if k != CONFIDENCE_ARGUMENT}
    value = arguments[CONFIDENCE_ARGUMENT]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return rest, None
    if not math.isfinite(value) or not 0 <= value <= 1:
        return rest, None
    return rest, float(value)


def model_tools(tools: dict[str, ToolSpec], gates: dict[str, Gate]) -> list[dict[str, Any]]:
    """The tools as the model sees them; confidence-gated ones ask for a `confidence`."""
    views = []
    for spec in tools.values():
        view = spec.model_view()
        gate = gates.get(spec.name)
        if gate is not None and gate.type == "confidence":
            schema = dict(view["input_schema"])
            schema["properties"] = {
                **schema.get("properties", {}),
                CONFIDENCE_ARGUMENT: {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "How sure you are (0-1) that this call is right",
                },
            }
            schema["required"] = [*schema.get("required", []), CONFIDENCE_ARGUMENT]
            view = {**view, "input_schema": schema}
        views.append(view)
    return views


class Guard:
    def __init__(
        self,
        definition: AgentDefinition,
        tools: dict[str, ToolSpec],
        redis: Redis | None,
        scope: limits.CallScope,
    ) -> None:
        self.definition = definition
        self.tools = tools
        self.redis = redis
        self.scope = scope

    def gate_for(
        self,
        tool: str,
        decision: PolicyDecision,
        confidence: float | None,
        taint: Taint,
    ) -> GateFired | None:
        gates = self.definition.gates
        settings = gates.get(tool, Gate())
        spec = self.tools.get(tool)
        if tool == ESCALATE_TOOL:
            return GateFired("escalation", "the agent asked for a human", gates.get(tool, Gate()))
        if decision.decision is Decision.REQUIRE_APPROVAL:
            return GateFired("approval", decision.reason, settings)
        gate = gates.get(tool)
        if gate is not None:
            if gate.type == "approval":
                return GateFired("approval", f"`{tool}` always needs a reviewer", gate)
            if gate.type == "escalation":
                return GateFired("escalation", f"`{tool}` is escalated to a human", gate)
            threshold = (
                gate.threshold if gate.threshold is not None else DEFAULT_CONFIDENCE_THRESHOLD
            )
            if confidence is None or confidence < threshold:
                stated = "no valid confidence" if confidence is None else f"{confidence:g}"
                return GateFired(
                    "confidence", f"the agent stated {stated}, below {threshold:g}", gate
                )
        if spec is not None and spec.side_effect is not SideEffect.READ:
            mode = self.definition.untrusted_content
            if mode is UntrustedContent.REQUIRE_APPROVAL and taint.untrusted:
                return GateFired(
                    "approval",
                    f"untrusted tool output is in the context and `{tool}` is a "
                    f"{spec.side_effect.value} tool",
                    settings,
                )
            if mode is UntrustedContent.REQUIRE_APPROVAL_WHEN_FLAGGED and taint.flagged:
                return GateFired(
                    "approval",
                    f"content flagged as a possible prompt injection is in the context and "
                    f"`{tool}` is a {spec.side_effect.value} tool",
                    settings,
                )
        return None

    def evaluate(self, tool: str, arguments: dict[str, Any]) -> PolicyDecision:
        spec = self.tools[tool]
        return evaluate(self.definition.policy, tool, spec.side_effect, arguments)

    async def rule(
        self, tool: str, arguments: dict[str, Any], confidence: float | None, taint: Taint
    ) -> Ruling:
        """The ruling on a call the model just asked for."""
        decision = self.evaluate(tool, arguments)
        if decision.decision is Decision.DENY:
            return Ruling("denied", f"denied by policy: {decision.reason}", decision)
        gate = self.gate_for(tool, decision, confidence, taint)
        if gate is not None:
            return Ruling("awaiting_approval", gate.reason, decision, gate)
        return await self._with_limits(tool, arguments, decision, approved=False)

    async def rule_approved(
        self, tool: str, arguments: dict[str, Any], current_policy: PolicySpec | None = None
    ) -> Ruling:
        """The ruling at execution of a call a reviewer approved (with these arguments):
        the rules again — the session's version of the policy and the agent's current one,
        so a deny added after the approval still wins — and the limits (deny limits bind)."""
        if tool not in self.tools:
            decision = PolicyDecision(Decision.DENY, tool, f"`{tool}` is no longer available")
            return Ruling("denied", decision.reason, decision)
        decision = self.evaluate(tool, arguments)
        if current_policy is not None and decision.decision is not Decision.DENY:
            current = evaluate(current_policy, tool, self.tools[tool].side_effect, arguments)
            if current.decision is Decision.DENY:
                decision = current
        if decision.decision is Decision.DENY:
            return Ruling("denied", f"denied by policy at execution: {decision.reason}", decision)
        return await self._with_limits(tool, arguments, decision, approved=True)

    async def _with_limits(
        self, tool: str, arguments: dict[str, Any], decision: PolicyDecision, *, approved: bool
    ) -> Ruling:
        policy = self.definition.policy
        if not policy.limits_for(tool):
            return Ruling("started", None, decision)
        if self.redis is None:
            refused = PolicyDecision(
                Decision.DENY, tool, "the tool's limits cannot be checked (no Redis)"
            )
            return Ruling("denied", refused.reason, refused)
        check = await limits.reserve(
            self.redis, policy, tool, arguments, self.scope, approved=approved
        )
        decision = decision.with_limits(check)
        if decision.decision is Decision.DENY:
            return Ruling("denied", f"over a limit: {decision.reason}", decision)
        if decision.decision is Decision.REQUIRE_APPROVAL and not approved:
            gate = GateFired("approval", decision.reason, self.definition.gates.get(tool, Gate()))
            return Ruling("awaiting_approval", decision.reason, decision, gate)
        return Ruling("started", None, decision, reservation=check.reservation)

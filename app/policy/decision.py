"""What an evaluation hands back: the decision and everything worth auditing about it.

`PolicyDecision` comes from the rules (`engine.evaluate`), `LimitCheck` from the limits
(`limits.reserve`); `PolicyDecision.with_limits` folds the second into the first. `audit()`
gives the JSON the caller writes to the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from app.policy.rules import Decision

ConstraintCheck = Literal["absent", "min", "max", "pattern", "equals", "in"]

_STRICTNESS = {Decision.ALLOW: 0, Decision.REQUIRE_APPROVAL: 1, Decision.DENY: 2}


def strictest(*decisions: Decision) -> Decision:
    """deny over require_approval over allow."""
    return max(decisions, key=_STRICTNESS.__getitem__, default=Decision.ALLOW)


@dataclass(frozen=True)
class ConstraintFailure:
    """Why a rule whose tool pattern matched did not match the call: its first failing check."""

    rule_index: int
    argument: str
    check: ConstraintCheck
    detail: str

    def audit(self) -> dict[str, Any]:
        return {
            "rule_index": self.rule_index,
            "argument": self.argument,
            "check": self.check,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class LimitBreach:
    """A limit this call would take past its cap (or that could not be checked)."""

    limit_index: int
    tool: str
    per: str
    decision: Decision
    reason: str
    used: str | None = None  # in the window before this call, as a decimal string
    requested: str | None = None
    cap: str | None = None

    def audit(self) -> dict[str, Any]:
        return {
            "limit_index": self.limit_index,
            "tool": self.tool,
            "per": self.per,
            "decision": self.decision.value,
            "reason": self.reason,
            "used": self.used,
            "requested": self.requested,
            "cap": self.cap,
        }


@dataclass(frozen=True)
class ReservedUnits:
    key: str
    bucket: int
    units: int


@dataclass(frozen=True)
class Reservation:
    """What `limits.reserve` added, so `limits.release` can give it back exactly once."""

    reservation_id: str
    entries: tuple[ReservedUnits, ...]
    ttl_ms: int


@dataclass(frozen=True)
class LimitCheck:
    """The limits' verdict on one call. `reservation` is set when units were recorded;
    release it if the call does not run after all."""

    decision: Decision
    applied: tuple[int, ...] = ()
    breaches: tuple[LimitBreach, ...] = ()
    reservation: Reservation | None = None
    store_unavailable: bool = False
    # (limit index, its total in the window before this call) when it was recorded
    used: tuple[tuple[int, str], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW

    @property
    def reason(self) -> str:
        return "; ".join(breach.reason for breach in self.breaches)

    def audit(self) -> dict[str, Any]:
        return {
            "decision": self.decision.value,
            "applied": list(self.applied),
            "breaches": [breach.audit() for breach in self.breaches],
            "reservation_id": self.reservation.reservation_id if self.reservation else None,
            "store_unavailable": self.store_unavailable,
            "used": {str(index): used for index, used in self.used},
        }


@dataclass(frozen=True)
class PolicyDecision:
    """The decision on one tool call, and what led to it.

    `rule_index`/`rule_priority` name the rule that matched (None: the default decided, or
    read-only mode); `failures` lists, for each rule whose tool pattern matched but whose
    constraints did not, the first check that failed; `limits` is set once limits were
    applied (`with_limits`).
    """

    decision: Decision
    tool: str
    reason: str
    rule_index: int | None = None
    rule_priority: int | None = None
    read_only: bool = False
    failures: tuple[ConstraintFailure, ...] = ()
    limits: LimitCheck | None = field(default=None)

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW

    def with_limits(self, check: LimitCheck) -> PolicyDecision:
        decision = strictest(self.decision, check.decision)
        reason = self.reason
        if decision is not self.decision:
            reason = check.reason
        return replace(self, decision=decision, reason=reason, limits=check)

    def audit(self) -> dict[str, Any]:
        return {
            "decision": self.decision.value,
            "tool": self.tool,
            "reason": self.reason,
            "rule_index": self.rule_index,
            "rule_priority": self.rule_priority,
            "read_only": self.read_only,
            "failures": [failure.audit() for failure in self.failures],
            "limits": self.limits.audit() if self.limits else None,
        }

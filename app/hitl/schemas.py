"""Approval API models (API.md "Approvals (reviewer)") and the shape of a gate."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.hitl.models import ApprovalStatus

MAX_ARGUMENTS_BYTES = 64 * 1024
DEFAULT_TIMEOUT_SECONDS = 3600

GateType = Literal["approval", "confidence", "escalation"]
OnTimeout = Literal["approve", "reject"]


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    MODIFY = "modify"


class Gate(BaseModel):
    """One entry of an agent's `gates` (API.md "Agents"): when a call of the tool needs a
    reviewer, how long they have, what happens then, and how many must agree."""

    model_config = ConfigDict(extra="forbid")

    type: GateType = "approval"
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="confidence: ask when the agent's is below this"
    )
    timeout_seconds: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0, le=30 * 24 * 3600)
    on_timeout: OnTimeout = Field(default="reject", description="The outcome when nobody decides")
    reviewers_required: int = Field(
        default=1, ge=1, le=10, description="N-of-M: distinct reviewers who must agree"
    )


class DecisionBody(BaseModel):
    """POST /v1/approvals/{id}/decision."""

    model_config = ConfigDict(extra="forbid")

    decision: Decision
    comment: str | None = Field(
        default=None, max_length=4000, description="Feedback; a rejection's reaches the model"
    )
    arguments: dict[str, Any] | None = Field(
        default=None,
        validate_default=True,
        description="modify only: the arguments to run instead (a JSON object)",
    )

    @field_validator("arguments")
    @classmethod
    def _arguments_match_decision(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        decision = info.data.get("decision")
        if decision is None:  # `decision` itself is invalid; that error says enough
            return value
        if decision is Decision.MODIFY and value is None:
            raise ValueError("modify needs `arguments`: the JSON object to run instead")
        if decision is not Decision.MODIFY and value is not None:
            raise ValueError(f"`arguments` belong to modify only, not {decision.value}")
        if value is not None and len(json.dumps(value)) > MAX_ARGUMENTS_BYTES:
            raise ValueError(f"arguments are limited to {MAX_ARGUMENTS_BYTES} bytes")
        return value


class DecisionRecord(BaseModel):
    """One reviewer's vote, as recorded (a request needing N reviewers collects N)."""

    reviewer: str
    decision: Decision
    comment: str | None
    arguments: dict[str, Any] | None = Field(description="modify only")
    arguments_hash: str = Field(description="sha256 of the arguments this vote is for")
    decided_at: datetime


class ApprovalView(BaseModel):
    id: str
    session_id: str
    agent: str | None
    tool: str
    tool_use_id: str
    arguments: dict[str, Any]
    arguments_hash: str = Field(description="sha256 of the canonical JSON of `arguments`")
    gate: GateType
    reason: str | None = Field(description="Why the gate fired")
    agent_reasoning: str | None
    context: Any = Field(description="The data the agent relied on")
    status: ApprovalStatus
    reviewers_required: int
    decisions: list[DecisionRecord] = Field(description="Every reviewer's vote so far")
    approved_arguments: dict[str, Any] | None = Field(
        description="What may run: approved as proposed, modified, or expired with on_timeout=approve"
    )
    on_timeout: OnTimeout
    created_at: datetime
    expires_at: datetime
    decided_by: str | None = Field(description="The reviewer whose vote settled it")
    decided_at: datetime | None
    comment: str | None


class ApprovalList(BaseModel):
    items: list[ApprovalView]
    next_cursor: str | None

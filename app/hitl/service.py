"""Approval business rules: the runtime asks (`request_approval`) and later reads the outcome
(`decided_for`); reviewers list, read and decide.

A decision is final and made once: the vote and the outcome are one conditional UPDATE
(pending, not expired, not voted by this reviewer), and when the refusal is looked into
afterwards the answer is an idempotent 200 (same reviewer, same decision), 409 (any other)
or 410 (expired). The request that settles the last pending approval of a session re-queues
it in the same transaction (transitions.change: event, NOTIFY wake-up).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

import asyncpg
from sqlalchemy.engine import Row

from app.api.auth import Principal
from app.db.engine import driver_connection
from app.db.ids import new_id
from app.errors import ValidationFailed
from app.hitl import repository
from app.hitl.errors import ApprovalDecided, ApprovalExpired, ApprovalNotFound, SelfApproval
from app.hitl.models import Approval, ApprovalStatus
from app.hitl.schemas import (
    ApprovalList,
    ApprovalView,
    Decision,
    DecisionBody,
    DecisionRecord,
    GateType,
    OnTimeout,
)
from app.observability import audit
from app.observability.audit import AuditAction, AuditRecord
from app.sessions import transitions
from app.sessions.states import SessionStatus
from app.tenants.scoping import TenantScope
from app.tools.executor import validate_arguments
from app.tools.registry import ToolRegistry
from app.tools.spec import ToolInputError

PLATFORM_ACTOR = "platform"  # the audit actor of what no person did: requests, expiry

# NOTIFY channel of new requests ("<approval_id>:<expires_at epoch seconds>"), so an expiry
# loop that sleeps until the soonest deadline can wake for a sooner one.
APPROVALS_CHANNEL = "agent_approvals"


def arguments_hash(arguments: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `arguments`: sorted keys, no spaces, UTF-8."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- the runtime's side ----------------------------------------------------------------------


async def request_approval(
    conn: asyncpg.Connection,
    *,
    tenant_id: str,
    session_id: str,
    subject: str | None,
    tool_use_id: str,
    tool: str,
    arguments: dict[str, Any],
    gate: GateType,
    reason: str | None,
    agent_reasoning: str | None,
    context: Any,
    timeout_seconds: float,
    on_timeout: OnTimeout = "reject",
    reviewers_required: int = 1,
) -> str:
    """Write a pending request for one proposed tool call and the tenant's reviewer
    notification (`approval.requested`, through the webhook outbox), in the caller's
    transaction; returns the approval id. `subject` is who started the session (None: the
    session's `created_by`) — they may not decide it. Asking again for the same
    (session_id, tool_use_id) returns the existing request and notifies nobody.
    The caller parks the session (running → awaiting_approval) in the same transaction."""
    if gate not in get_args(GateType):
        raise ValueError(f"gate must be one of {get_args(GateType)}, not {gate!r}")
    if on_timeout not in get_args(OnTimeout):
        raise ValueError(f"on_timeout must be one of {get_args(OnTimeout)}, not {on_timeout!r}")
    if not math.isfinite(timeout_seconds) or timeout_seconds <= 0:
        raise ValueError(f"timeout_seconds must be positive, not {timeout_seconds!r}")
    if reviewers_required < 1:
        raise ValueError(f"reviewers_required must be at least 1, not {reviewers_required}")
    approval_id = await repository.insert(
        conn,
        approval_id=new_id("apr"),
        tenant_id=tenant_id,
        session_id=session_id,
        session_created_by=subject,
        tool_use_id=tool_use_id,
        tool=tool,
        arguments=arguments,
        arguments_hash=arguments_hash(arguments),
        gate=gate,
        reason=reason,
        agent_reasoning=agent_reasoning,
        context=context,
        reviewers_required=reviewers_required,
        on_timeout=on_timeout,
        timeout_seconds=timeout_seconds,
        channel=APPROVALS_CHANNEL,
    )
    if approval_id is not None:
        await audit.append(
            conn,
            [
                AuditRecord(
                    tenant_id,
                    session_id,
                    PLATFORM_ACTOR,
                    AuditAction.APPROVAL_REQUESTED,
                    {
                        "approval_id": approval_id,
                        "tool": tool,
                        "tool_use_id": tool_use_id,
                        "arguments_hash": arguments_hash(arguments),
                        "gate": gate,
                        "reason": reason,
                        "timeout_seconds": timeout_seconds,
                        "on_timeout": on_timeout,
                        "reviewers_required": reviewers_required,
                    },
                )
            ],
        )
        return approval_id
    existing = await repository.find_by_call(conn, session_id, tool_use_id)
    if existing is None:
        raise LookupError(f"session {session_id} of tenant {tenant_id} not found")
    return existing


@dataclass(frozen=True)
class DecidedApproval:
    """The outcome of a settled request, for the runtime. Run the call only if `approved`,
    with exactly `arguments` (check `arguments_hash(arguments) == arguments_hash` before
    running, and evaluate policy again: a deny added meanwhile still wins). Otherwise give
    the model an error result (`comment` is the reviewer's feedback, if any)."""

    approval_id: str
    tool_use_id: str
    tool: str
    status: ApprovalStatus  # approved | modified | rejected | expired
    approved: bool  # approved, modified, or expired under on_timeout = approve
    arguments: dict[str, Any] | None  # what to run when approved
    arguments_hash: str | None
    comment: str | None
    decided_by: str | None  # None when it expired


async def decided_for(conn: asyncpg.Connection, session_id: str) -> dict[str, DecidedApproval]:
    """The settled requests of a session by tool_use_id (pending ones are left out)."""
    decided: dict[str, DecidedApproval] = {}
    for row in await repository.decided_for(conn, session_id):
        status = ApprovalStatus(row["status"])
        arguments = (
            None if row["approved_arguments"] is None else json.loads(row["approved_arguments"])
        )
        run_hash = None
        if arguments is not None:
            # A modification is bound to the reviewer's arguments; the rest to the proposal.
            run_hash = (
                arguments_hash(arguments)
                if status is ApprovalStatus.MODIFIED
                else str(row["arguments_hash"])
            )
        decided[row["tool_use_id"]] = DecidedApproval(
            approval_id=row["approval_id"],
            tool_use_id=row["tool_use_id"],
            tool=row["tool"],
            status=status,
            approved=arguments is not None,
            arguments=arguments,
            arguments_hash=run_hash,
            comment=row["comment"],
            decided_by=row["decided_by"],
        )
    return decided


async def requeue_if_settled(
    conn: asyncpg.Connection, session_id: str, detail: dict[str, Any]
) -> bool:
    """Wake the session if nothing of it is pending any more (the caller holds its row
    lock). False if it is not awaiting approval (cancelled meanwhile, say)."""
    if await repository.pending_left(conn, session_id):
        return False
    changed = await transitions.change(
        conn,
        session_id,
        SessionStatus.QUEUED,
        from_statuses=[SessionStatus.AWAITING_APPROVAL.value],
        detail=detail,
    )
    return changed is not None


# -- reviewers -------------------------------------------------------------------------------


def view(approval: Approval, agent: str | None) -> ApprovalView:
    return ApprovalView(
        id=approval.approval_id,
        session_id=approval.session_id,
        agent=agent,
        tool=approval.tool,
        tool_use_id=approval.tool_use_id,
        arguments=approval.arguments,
        arguments_hash=approval.arguments_hash,
        gate=approval.gate,
        reason=approval.reason,
        agent_reasoning=approval.agent_reasoning,
        context=approval.context,
        status=ApprovalStatus(approval.status),
        reviewers_required=approval.reviewers_required,
        decisions=[DecisionRecord.model_validate(vote) for vote in approval.decisions],
        approved_arguments=approval.approved_arguments,
        on_timeout=approval.on_timeout,
        created_at=approval.created_at,
        expires_at=approval.expires_at,
        decided_by=approval.decided_by,
        decided_at=approval.decided_at,
        comment=approval.comment,
    )


def _view_of(row: Row[Approval, str | None] | None, approval_id: str) -> ApprovalView:
    if row is None:
        raise ApprovalNotFound(f"approval {approval_id} not found")
    approval, agent = row
    return view(approval, agent)


async def get(scope: TenantScope, approval_id: str) -> ApprovalView:
    return _view_of(await repository.get(scope, approval_id), approval_id)


def _encode_cursor(approval: ApprovalView) -> str:
    raw = f"{approval.created_at.isoformat()}|{approval.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, approval_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("cursor time has no time zone")
        return moment.astimezone(UTC), approval_id
    except (ValueError, OverflowError) as exc:
        raise ValidationFailed("invalid cursor") from exc


async def list_approvals(
    scope: TenantScope,
    *,
    status: ApprovalStatus | None,
    session_id: str | None,
    cursor: str | None,
    limit: int,
) -> ApprovalList:
    rows = await repository.list_page(
        scope,
        status=None if status is None else status.value,
        session_id=session_id,
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit,
    )
    items = [view(approval, agent) for approval, agent in rows[:limit]]
    next_cursor = _encode_cursor(items[-1]) if len(rows) > limit else None
    return ApprovalList(items=items, next_cursor=next_cursor)


async def _checked_modification(
    scope: TenantScope, tools: ToolRegistry, tool: str, arguments: dict[str, Any]
) -> None:
    """A modification must be valid input for the tool (422 otherwise); the runtime checks
    again when it runs the call. A tool no longer registered is left to the runtime."""
    spec = (await tools.for_tenant(scope.db, scope.tenant_id, [tool])).get(tool)
    if spec is None:
        return
    try:
        validate_arguments(spec, arguments)
    except ToolInputError as exc:
        message = str(exc)
        raise ValidationFailed(
            message,
            errors=[
                {"field": "arguments", "location": "body", "message": message, "type": "tool_input"}
            ],
        ) from exc


async def decide(
    scope: TenantScope,
    principal: Principal,
    approval_id: str,
    body: DecisionBody,
    *,
    tools: ToolRegistry,
) -> ApprovalView:
    """Record `principal`'s decision (see the module docstring); 404 for another tenant's
    request, 403 for the session's own creator, 409 decided otherwise, 410 expired."""
    locked = await repository.lock_session_of(scope, approval_id)
    if locked is None:
        raise ApprovalNotFound(f"approval {approval_id} not found")
    session_id, tool, session_created_by, session_creator = locked
    if principal.sub in (session_created_by, session_creator):
        raise SelfApproval(
            f"{principal.sub} started session {session_id}; another reviewer must decide"
        )
    voted_hash = None
    if body.decision is Decision.MODIFY:
        assert body.arguments is not None  # DecisionBody requires them for modify
        await _checked_modification(scope, tools, tool, body.arguments)
        voted_hash = arguments_hash(body.arguments)
    conn = await driver_connection(scope.db)
    status = await repository.record_vote(
        conn,
        tenant_id=scope.tenant_id,
        approval_id=approval_id,
        reviewer=principal.sub,
        decision=body.decision.value,
        comment=body.comment,
        arguments=body.arguments,
        arguments_hash=voted_hash,
    )
    if status is None:
        await _explain_refusal(conn, scope.tenant_id, approval_id, principal.sub, body, voted_hash)
        return await get(scope, approval_id)
    vote: dict[str, Any] = {
        "approval_id": approval_id,
        "tool": tool,
        "decision": body.decision.value,
        "status": status,
        "comment": body.comment,
    }
    if body.arguments is not None:
        vote |= {"arguments": body.arguments, "arguments_hash": voted_hash}
    if status != ApprovalStatus.PENDING:
        await requeue_if_settled(
            conn,
            session_id,
            {"reason": "approval_decided", "approval_id": approval_id, "decision": status},
        )
    await audit.append(
        conn,
        [
            AuditRecord(
                scope.tenant_id, session_id, principal.sub, AuditAction.APPROVAL_DECIDED, vote
            )
        ],
    )
    return await get(scope, approval_id)


async def _explain_refusal(
    conn: asyncpg.Connection,
    tenant_id: str,
    approval_id: str,
    reviewer: str,
    body: DecisionBody,
    voted_hash: str | None,
) -> None:
    """Return (the idempotent repeat) or raise the reason a vote changed nothing."""
    status, due, own_vote = await repository.vote_refused(conn, tenant_id, approval_id, reviewer)
    if status == ApprovalStatus.EXPIRED or (status == ApprovalStatus.PENDING and due):
        raise ApprovalExpired(f"approval {approval_id} expired before a decision")
    if own_vote is not None:
        same_decision = own_vote["decision"] == body.decision.value
        same_arguments = voted_hash is None or own_vote["arguments_hash"] == voted_hash
        if same_decision and same_arguments:
            return
        raise ApprovalDecided(
            f"you already decided {own_vote['decision']} on approval {approval_id}; "
            "a decision is final"
        )
    raise ApprovalDecided(f"approval {approval_id} was already decided: {status}")

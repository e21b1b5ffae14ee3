"""Approvals (reviewer role): list, read, decide. Another tenant's request is a 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from app.api.deps import Context, ReviewerPrincipal, Scope, api_router
from app.hitl import service as hitl_service
from app.hitl.models import ApprovalStatus
from app.hitl.schemas import ApprovalList, ApprovalView, DecisionBody

router = api_router(prefix="/v1/approvals", tags=["approvals"])


@router.get("", summary="Approval requests, oldest first")
async def list_approvals(
    principal: ReviewerPrincipal,
    scope: Scope,
    status_filter: Annotated[ApprovalStatus | None, Query(alias="status")] = None,
    session_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> ApprovalList:
    return await hitl_service.list_approvals(
        scope, status=status_filter, session_id=session_id, cursor=cursor, limit=limit
    )


@router.get(
    "/{approval_id}",
    summary="The proposed call, the agent's reasoning and context, and the decision so far",
    responses={404: {"description": "No such request in the caller's tenant"}},
)
async def get_approval(
    approval_id: str, principal: ReviewerPrincipal, scope: Scope
) -> ApprovalView:
    return await hitl_service.get(scope, approval_id)


@router.post(
    "/{approval_id}/decision",
    summary="Approve, reject or modify (final; N-of-M gates collect one vote per reviewer)",
    responses={
        403: {"description": "Not a reviewer, or the caller started the session"},
        404: {"description": "No such request in the caller's tenant"},
        409: {"description": "Already decided otherwise (a decision is final)"},
        410: {"description": "The request expired"},
        422: {"description": "modify without valid `arguments`, or arguments on approve/reject"},
    },
)
async def decide(
    approval_id: str,
    body: DecisionBody,
    principal: ReviewerPrincipal,
    scope: Scope,
    context: Context,
) -> ApprovalView:
    approval = await hitl_service.decide(scope, principal, approval_id, body, tools=context.tools)
    # Followers of the session (SSE, long-poll) hear of its re-queue once it is committed.
    scope.db.info.setdefault("after_commit", []).append(
        lambda: context.feed.announce(approval.session_id)
    )
    return approval

"""Audit (admin): the tenant's audit log, and a check of its hash chains."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import AwareDatetime

from app.api.deps import AdminPrincipal, DbSession, Scope, api_router
from app.observability import audit
from app.observability.audit import AuditAction, AuditList, VerifyResult

router = api_router(prefix="/v1/audit", tags=["audit"])


@router.get("", summary="The tenant's audit entries, newest first")
async def list_audit_entries(
    principal: AdminPrincipal,
    scope: Scope,
    session_id: Annotated[str | None, Query(max_length=40)] = None,
    action: AuditAction | None = None,
    since: Annotated[
        AwareDatetime | None, Query(description="Only entries created at or after (RFC 3339)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> AuditList:
    return await audit.list_entries(
        scope, session_id=session_id, action=action, since=since, cursor=cursor, limit=limit
    )


@router.get(
    "/verify",
    summary="Recompute the tenant's hash chains; the lowest id of an entry that fails, if any",
)
async def verify_audit_chain(principal: AdminPrincipal, db: DbSession) -> VerifyResult:
    return await audit.verify(db, principal.tenant)

"""Reads of sessions, their events and tool calls — always through the tenant scope."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, or_, select

from app.api.models import IdempotencyKey
from app.sessions.errors import SessionNotFound
from app.sessions.models import Session, SessionEvent
from app.tenants.scoping import TenantScope
from app.tools.models import ToolCall


async def get(scope: TenantScope, session_id: str) -> Session:
    row = (
        await scope.db.execute(scope.select(Session).where(Session.session_id == session_id))
    ).scalar_one_or_none()
    if row is None:
        raise SessionNotFound(f"session {session_id} not found")
    return row


async def list_page(
    scope: TenantScope,
    *,
    status: str | None,
    agent: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Session]:
    statement = scope.select(Session).order_by(Session.created_at.desc(), Session.session_id.desc())
    if status is not None:
        statement = statement.where(Session.status == status)
    if agent is not None:
        statement = statement.where(Session.agent_name == agent)
    if after is not None:
        created_at, session_id = after
        statement = statement.where(
            or_(
                Session.created_at < created_at,
                and_(Session.created_at == created_at, Session.session_id < session_id),
            )
        )
    return list((await scope.db.execute(statement.limit(limit + 1))).scalars())


async def events(
    scope: TenantScope, session_id: str, *, after_id: int, limit: int
) -> list[SessionEvent]:
    await get(scope, session_id)
    rows = await scope.db.execute(
        select(SessionEvent)
        .where(SessionEvent.session_id == session_id, SessionEvent.seq > after_id)
        .order_by(SessionEvent.seq)
        .limit(limit + 1)
    )
    return list(rows.scalars())


async def tool_calls(scope: TenantScope, session_id: str) -> list[ToolCall]:
    await get(scope, session_id)
    rows = await scope.db.execute(
        select(ToolCall)
        .where(ToolCall.session_id == session_id)
        .order_by(ToolCall.turn, ToolCall.started_at, ToolCall.tool_use_id)
    )
    return list(rows.scalars())


async def delete_finished(scope: TenantScope, session_id: str) -> bool:
    """Delete the session if it is (still) finished; its rows in other tables go with it
    (foreign-key cascades), and so does the idempotency record that points at it."""
    await scope.db.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == scope.tenant_id, IdempotencyKey.resource_id == session_id
        )
    )
    result = await scope.db.execute(
        delete(Session).where(
            Session.session_id == session_id,
            Session.tenant_id == scope.tenant_id,
            Session.status.in_(["completed", "failed", "cancelled", "timed_out"]),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]

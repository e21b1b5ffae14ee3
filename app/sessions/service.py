"""Session business rules for the API: create (with the agent's current version), read,
list, cancel, and the event and tool-call histories."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.agents import repository as agents_repository
from app.agents.errors import AgentDisabled, AgentNotFound
from app.api.auth import Principal
from app.db.engine import driver_connection
from app.db.ids import new_id
from app.errors import Conflict, ValidationFailed
from app.observability import audit
from app.sessions import repository, transitions
from app.sessions.creation import SessionCreator
from app.sessions.errors import SessionBusy, SessionFinished, SessionNotFound
from app.sessions.models import Session
from app.sessions.schemas import (
    EventList,
    EventView,
    SessionCreate,
    SessionError,
    SessionList,
    SessionMessage,
    SessionView,
    ToolCallList,
    ToolCallView,
    Usage,
)
from app.sessions.states import SessionStatus
from app.sessions.transitions import NewSession
from app.tenants.scoping import TenantScope
from app.webhooks import service as webhooks_service

RESULT_PREVIEW_CHARS = 500
# Statements a create tries before giving up on an agent that keeps changing under it
# (each retry follows a look-up that holds the agent row's share lock: one is enough but
# for a shadowing agent of the tenant's appearing at that very moment).
CREATE_ATTEMPTS = 3


def view(session: Session) -> SessionView:
    return SessionView(
        id=session.session_id,
        agent=session.agent_name,
        agent_version=session.agent_version,
        status=SessionStatus(session.status),
        input=session.input,
        result=session.result,
        error=SessionError(**session.error) if session.error else None,
        turns=session.turns,
        usage=Usage(
            input_tokens=session.input_tokens,
            output_tokens=session.output_tokens,
            cost_usd=float(session.cost_usd),
        ),
        priority=session.priority,
        metadata=session.session_metadata,
        parent_id=session.parent_id,
        trace_id=session.trace_id,
        cancel_requested=session.cancel_requested_at is not None,
        created_at=session.created_at,
        updated_at=session.updated_at,
        finished_at=session.finished_at,
    )


async def create(
    scope: TenantScope,
    principal: Principal,
    body: SessionCreate,
    *,
    allowlist: list[str],
    creator: SessionCreator | None = None,
) -> SessionView:
    """Queue a session of the agent's current (or requested) version and wake a worker.

    If the request has written nothing yet (no transaction begun) and a `creator` is given,
    the insert may share one statement and commit with other requests' (`creation`);
    otherwise it goes in the request's transaction."""
    db = scope.db
    if body.webhook_url is not None:
        await webhooks_service.check_url(body.webhook_url, allowlist, "webhook_url")
    new = NewSession(
        session_id=new_id("ses"),
        tenant_id=scope.tenant_id,
        agent_name=body.agent,
        agent_version=body.version,
        priority=body.priority,
        session_input=body.input,
        metadata=body.metadata,
        subject=body.subject,
        created_by=principal.sub,
        webhook_url=body.webhook_url,
        trace_id=secrets.token_hex(16),
    )
    if creator is not None and not db.in_transaction():
        row = await creator.write(new)
        if row is not None:
            return view_of_new(row, session_input=body.input, metadata=body.metadata)
        await _check_startable(db, scope.tenant_id, body)  # 404 or 409, if that is why
    conn = await driver_connection(db)
    for _ in range(CREATE_ATTEMPTS):
        # The agent look-up and the insert are one statement (one round trip)...
        [row] = await transitions.insert_queued(conn, [new])
        if row is not None:
            return view_of_new(row, session_input=body.input, metadata=body.metadata)
        # ...that wrote nothing: say why (404 or 409). If the agent can take the session
        # after all, its row changed while the statement waited on its lock (a new version):
        # the look-up below read it again and now holds its share lock, so the next
        # statement sees it as it is.
        await _check_startable(db, scope.tenant_id, body)
    raise Conflict(f"agent {body.agent} kept changing while the session was being started")


async def _check_startable(db: AsyncSession, tenant_id: str, body: SessionCreate) -> None:
    """Raise the precise reason a session of `body.agent` cannot start, if there is one."""
    agent = await agents_repository.for_new_session(db, tenant_id, body.agent, body.version)
    if agent is None:
        if body.version is not None and await agents_repository.find_visible(
            db, tenant_id, body.agent
        ):
            raise AgentNotFound(f"agent {body.agent} has no version {body.version}")
        raise AgentNotFound(f"agent {body.agent} not found")
    if not agent.enabled:
        raise AgentDisabled(f"agent {agent.name} is disabled: new sessions are refused")


def view_of_new(row: Any, *, session_input: Any, metadata: dict[str, Any]) -> SessionView:
    """The view of a session just inserted: its RETURNING row, and the JSON values it was
    given (the jsonb columns need no round trip through the driver's codecs)."""
    return SessionView(
        id=row["session_id"],
        agent=row["agent_name"],
        agent_version=row["agent_version"],
        status=SessionStatus(row["status"]),
        input=session_input,
        result=None,
        error=None,
        turns=0,
        usage=Usage(input_tokens=0, output_tokens=0, cost_usd=0.0),
        priority=row["priority"],
        metadata=metadata,
        parent_id=row["parent_id"],
        trace_id=row["trace_id"],
        cancel_requested=False,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=None,
    )


async def get(scope: TenantScope, session_id: str) -> SessionView:
    return view(await repository.get(scope, session_id))


def _encode_cursor(session: Session) -> str:
    raw = f"{session.created_at.isoformat()}|{session.session_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, session_id) a cursor of `_encode_cursor` holds; 422 for anything else
    (a time without a zone, or one out of range in UTC, would otherwise reach the database)."""
    try:
        created_at, session_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("cursor time has no time zone")
        return moment.astimezone(UTC), session_id
    except (ValueError, OverflowError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValidationFailed("invalid cursor") from exc


async def list_sessions(
    scope: TenantScope,
    *,
    status: SessionStatus | None,
    agent: str | None,
    cursor: str | None,
    limit: int,
) -> SessionList:
    rows = await repository.list_page(
        scope,
        status=status.value if status else None,
        agent=agent,
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit,
    )
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return SessionList(items=[view(row) for row in rows[:limit]], next_cursor=next_cursor)


async def cancel(
    scope: TenantScope, session_id: str, *, reason: str = "cancelled by the client"
) -> SessionView:
    """Record the cancel request at once. A queued or waiting session ends now; a running
    one ends at its worker's next safe point (it never runs another tool)."""
    session = await repository.get(scope, session_id)
    status = SessionStatus(session.status)
    if status is SessionStatus.CANCELLED:
        return view(session)
    if status.is_terminal:
        raise SessionFinished(
            f"session {session_id} already ended ({status.value}); nothing to cancel"
        )
    db = scope.db
    await db.execute(
        update(Session)
        .where(Session.session_id == session_id, Session.cancel_requested_at.is_(None))
        .values(cancel_requested_at=func.now())
    )
    conn = await driver_connection(db)
    if status is not SessionStatus.RUNNING:
        await transitions.change(
            conn,
            session_id,
            SessionStatus.CANCELLED,
            from_statuses=["queued", "awaiting_approval", "awaiting_input"],
            error={"code": "cancelled", "message": reason},
            detail={"reason": reason},
        )
    await conn.execute("SELECT pg_notify('agent_cancel', $1)", session_id)
    await db.refresh(session)
    return view(session)


async def events(scope: TenantScope, session_id: str, *, after_id: int, limit: int) -> EventList:
    rows = await repository.events(scope, session_id, after_id=after_id, limit=limit)
    items = [
        EventView(id=r.seq, seq=r.seq, type=r.type, data=r.data, created_at=r.created_at)
        for r in rows[:limit]
    ]
    next_cursor = str(items[-1].id) if len(rows) > limit else None
    return EventList(items=items, next_cursor=next_cursor)


def _preview(result: Any) -> str | None:
    if result is None:
        return None
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    return text[:RESULT_PREVIEW_CHARS]


async def tool_calls(scope: TenantScope, session_id: str) -> ToolCallList:
    rows = await repository.tool_calls(scope, session_id)
    return ToolCallList(
        items=[
            ToolCallView(
                tool_call_id=row.tool_use_id,
                turn=row.turn,
                tool=row.tool,
                arguments=row.arguments,
                status=row.status,
                attempts=row.attempts,
                idempotent=row.idempotent,
                result_preview=_preview(row.result),
                error=row.error,
                started_at=row.started_at,
                finished_at=row.finished_at,
            )
            for row in rows
        ]
    )


async def cancel_for_disabled_agent(db: AsyncSession, tenant_id: str, agent_name: str) -> int:
    """The kill switch: every unfinished session of the tenant's agent `agent_name` is
    cancelled (queued and waiting ones now, running ones at their next safe point). Sessions
    of a platform agent of the same name (which the tenant's shadows) are another agent's and
    are left alone. Returns how many."""
    agent = await agents_repository.find_owned(db, tenant_id, agent_name)
    if agent is None:
        return 0
    scope = TenantScope(db, tenant_id)
    rows = await db.execute(
        scope.select(Session).where(
            Session.agent_id == agent.agent_id,
            Session.status.in_(["queued", "running", "awaiting_approval", "awaiting_input"]),
        )
    )
    sessions = list(rows.scalars())
    for session in sessions:
        await cancel(scope, session.session_id, reason=f"agent {agent_name} was disabled")
    return len(sessions)


async def erase(scope: TenantScope, session_id: str, *, actor: str) -> None:
    """Erase a finished session with everything stored about it: its events, tool-call
    ledger, approvals, memories and webhook deliveries (all by foreign-key cascade, in one
    statement), and the payloads of its audit entries (the hash chain stays verifiable;
    a `session.erased` entry records who erased it). A session that runs, is queued or waits
    on a reviewer or input → 409."""
    session = await repository.get(scope, session_id)
    status = SessionStatus(session.status)
    if not status.is_terminal:
        raise SessionBusy(
            f"session {session_id} is {status.value}; cancel it or wait for it to finish before erasing it"
        )
    erased = await repository.delete_finished(scope, session_id)
    if not erased:  # it was continued or changed meanwhile
        raise SessionBusy(f"session {session_id} changed while being erased; try again")
    await audit.erase_session_payloads(
        scope.db, tenant_id=scope.tenant_id, session_id=session_id, actor=actor
    )


CONTINUABLE = ("completed", "failed", "awaiting_input")
BUSY = ("queued", "running", "awaiting_approval")


async def continue_session(
    scope: TenantScope, session_id: str, body: SessionMessage
) -> SessionView:
    """Add user input to a conversation and run it again with its full history.

    One run per session at a time: a finished (or `awaiting_input`) session is queued again
    with the input as its next user turn; while a run is queued or in progress the input is
    refused (409) or, with `if_busy: queue`, kept and taken up when that run ends — never
    interleaved. The session row is locked for the decision, so a run that is just ending
    either sees the queued input or this request sees the run ended.
    """
    db = scope.db
    session = (
        await db.execute(
            scope.select(Session).where(Session.session_id == session_id).with_for_update()
        )
    ).scalar_one_or_none()
    if session is None:
        raise SessionNotFound(f"session {session_id} not found")
    await db.refresh(session)
    conn = await driver_connection(db)
    if session.status in BUSY:
        if body.if_busy == "reject":
            raise SessionBusy(
                f"session {session_id} is {session.status}: one run at a time. Send again when it"
                ' ends, or pass "if_busy": "queue" to run this input after it'
            )
        await transitions.queue_input(conn, session_id, body.input)
    elif session.status in CONTINUABLE:
        deadline_seconds = await _deadline_seconds(db, session)
        await transitions.append_user_message(conn, session_id, body.input)
        changed = await transitions.change(
            conn,
            session_id,
            SessionStatus.QUEUED,
            from_statuses=list(CONTINUABLE),
            set_error=True,
            detail={"reason": "new input"},
        )
        assert changed is not None  # the row is locked
        await db.execute(
            update(Session)
            .where(Session.session_id == session_id)
            .values(deadline_at=func.now() + timedelta(seconds=deadline_seconds))
        )
    else:
        raise SessionFinished(f"session {session_id} was {session.status}; it cannot be continued")
    await db.refresh(session)
    return view(session)


async def _deadline_seconds(db: Any, session: Session) -> float:
    """A continued run gets the agent version's deadline again, from now."""
    version = await agents_repository.get_version(
        db, session.agent_id or "", session.agent_version or 0
    )
    if version is None:
        return 900.0
    return float(version.definition["limits"]["deadline_seconds"])

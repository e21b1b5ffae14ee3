"""All SQL of approvals.

Writes are raw asyncpg (the runtime calls them on its own connections; API routes on the
connection under their SQLAlchemy transaction) and are codec-agnostic: JSON goes in as text
cast to jsonb and comes out as text. Reads for the API go through the tenant scope.

Lock order, everywhere: the session row, then its approvals. A decision and the expiry
sweep both take the session row first, so they never deadlock, and "is anything of this
session still pending?" is answered by whoever holds that lock.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Row

from app.hitl.models import Approval
from app.sessions.models import Session
from app.tenants.scoping import TenantScope

# The timestamp format of webhook payloads (as app.sessions.transitions writes them).
_RFC3339 = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""

# A new pending request of a session of tenant $2, and its reviewer notification in the
# tenant's webhook outbox (same transaction). Nothing is inserted, and nothing notified,
# when the call already has a request or the session is not the tenant's.
_INSERT = f"""
WITH inserted AS (
    INSERT INTO approvals (approval_id, tenant_id, session_id, session_created_by, tool_use_id,
                           tool, arguments, arguments_hash, gate, reason, agent_reasoning,
                           context, reviewers_required, on_timeout, expires_at)
    SELECT $1, s.tenant_id, s.session_id, COALESCE($4, s.created_by), $5, $6, $7::jsonb, $8,
           $9, $10, $11, $12::jsonb, $13, $14, now() + make_interval(secs => $15)
    FROM sessions s WHERE s.session_id = $3 AND s.tenant_id = $2
    ON CONFLICT (session_id, tool_use_id) DO NOTHING
    RETURNING approval_id, tenant_id, session_id, tool, gate, expires_at
), outboxed AS (
    INSERT INTO webhook_outbox (delivery_id, tenant_id, session_id, event_type, url, payload)
    SELECT 'whd_' || replace(gen_random_uuid()::text, '-', ''), i.tenant_id, i.session_id,
           'approval.requested', t.webhook_url,
           jsonb_build_object(
               'type', 'approval.requested',
               'timestamp', to_char(now() AT TIME ZONE 'UTC', {_RFC3339}),
               'data', jsonb_build_object('approval', jsonb_build_object(
                   'id', i.approval_id, 'session_id', i.session_id, 'agent', s.agent_name,
                   'tool', i.tool, 'gate', i.gate, 'status', 'pending',
                   'expires_at', to_char(i.expires_at AT TIME ZONE 'UTC', {_RFC3339}),
                   'link', '/v1/approvals/' || i.approval_id)))
    FROM inserted i
    JOIN tenants t ON t.tenant_id = i.tenant_id
    JOIN sessions s ON s.session_id = i.session_id
    WHERE t.webhook_url IS NOT NULL
)
SELECT approval_id, pg_notify($16, approval_id || ':' || extract(epoch FROM expires_at)::text)
FROM inserted
"""

_FIND_BY_CALL = "SELECT approval_id FROM approvals WHERE session_id = $1 AND tool_use_id = $2"

_DECIDED_FOR = """
SELECT approval_id, tool_use_id, tool, status, arguments_hash, approved_arguments::text,
       comment, decided_by
FROM approvals WHERE session_id = $1 AND status <> 'pending'
"""

# Record reviewer $3's vote and, when it settles the request, its outcome — one conditional
# UPDATE: only a pending, unexpired request this reviewer has not voted on yet changes. A
# reject settles at once (one veto); approve and modify are votes for a set of arguments
# (by hash: $7, or the proposed ones for approve) and settle when `reviewers_required`
# distinct reviewers voted for the same set. The correlated sub-select reads the row being
# updated, so under a race it sees the winner's version.
_RECORD_VOTE = f"""
UPDATE approvals a
SET (status, decided_by, decided_at, comment, approved_arguments, decisions) = (
    SELECT CASE WHEN v.settles THEN v.outcome ELSE 'pending' END,
           CASE WHEN v.settles THEN $3 END,
           CASE WHEN v.settles THEN now() END,
           CASE WHEN v.settles THEN $5 END,
           CASE WHEN v.settles AND v.outcome <> 'rejected' THEN v.voted_arguments END,
           a.decisions || jsonb_build_array(jsonb_build_object(
               'reviewer', $3::text, 'decision', $4::text, 'comment', $5::text,
               'arguments', $6::jsonb, 'arguments_hash', v.voted_hash,
               'decided_at', to_char(now() AT TIME ZONE 'UTC', {_RFC3339})))
    FROM (
        SELECT h.voted_hash,
               COALESCE($6::jsonb, a.arguments) AS voted_arguments,
               CASE WHEN $4 = 'reject' THEN 'rejected'
                    WHEN h.voted_hash = a.arguments_hash THEN 'approved'
                    ELSE 'modified' END AS outcome,
               $4 = 'reject' OR 1 + (
                   SELECT count(*) FROM jsonb_array_elements(a.decisions) d
                   WHERE d->>'decision' <> 'reject' AND d->>'arguments_hash' = h.voted_hash
               ) >= a.reviewers_required AS settles
        FROM (SELECT COALESCE($7, a.arguments_hash) AS voted_hash) h
    ) v
)
WHERE a.approval_id = $1 AND a.tenant_id = $2 AND a.status = 'pending' AND a.expires_at > now()
  AND NOT a.decisions @> jsonb_build_array(jsonb_build_object('reviewer', $3::text))
RETURNING a.status
"""

# Why a vote changed nothing: the request as it is now, and this reviewer's earlier vote.
_VOTE_REFUSED = """
SELECT a.status, a.expires_at <= now() AS due,
       (SELECT d::text FROM jsonb_array_elements(a.decisions) d WHERE d->>'reviewer' = $3
        LIMIT 1) AS own_vote
FROM approvals a WHERE a.approval_id = $1 AND a.tenant_id = $2
"""

_PENDING_LEFT = "SELECT count(*) FROM approvals WHERE session_id = $1 AND status = 'pending'"

# Sessions with due requests, locked (those being decided right now are skipped: the next
# sweep takes them, or the decision wins).
_LOCK_DUE_SESSIONS = """
WITH due AS (
    SELECT session_id, min(expires_at) AS first_due FROM approvals
    WHERE status = 'pending' AND expires_at <= now()
    GROUP BY session_id ORDER BY first_due LIMIT $1
)
SELECT s.session_id FROM sessions s JOIN due ON due.session_id = s.session_id
FOR UPDATE OF s SKIP LOCKED
"""

# Expire the due requests of the locked sessions, applying each one's on_timeout policy —
# the same conditional UPDATE guard as a decision (pending), so only one of them wins.
_EXPIRE = """
UPDATE approvals
SET status = 'expired', decided_at = now(),
    approved_arguments = CASE WHEN on_timeout = 'approve' THEN arguments END
WHERE session_id = ANY($1::text[]) AND status = 'pending' AND expires_at <= now()
RETURNING approval_id, tenant_id, session_id, tool, on_timeout
"""

_NEXT_EXPIRY = "SELECT min(expires_at) FROM approvals WHERE status = 'pending'"


async def insert(
    conn: asyncpg.Connection,
    *,
    approval_id: str,
    tenant_id: str,
    session_id: str,
    session_created_by: str | None,
    tool_use_id: str,
    tool: str,
    arguments: dict[str, Any],
    arguments_hash: str,
    gate: str,
    reason: str | None,
    agent_reasoning: str | None,
    context: Any,
    reviewers_required: int,
    on_timeout: str,
    timeout_seconds: float,
    channel: str,
) -> str | None:
    """The new request's id; None if nothing was inserted (see `_INSERT`)."""
    row = await conn.fetchrow(
        _INSERT,
        approval_id, tenant_id, session_id, session_created_by, tool_use_id, tool,
        json.dumps(arguments), arguments_hash, gate, reason, agent_reasoning,
        None if context is None else json.dumps(context), reviewers_required, on_timeout,
        timeout_seconds, channel,
    )  # fmt: skip
    return None if row is None else str(row["approval_id"])


async def find_by_call(conn: asyncpg.Connection, session_id: str, tool_use_id: str) -> str | None:
    value = await conn.fetchval(_FIND_BY_CALL, session_id, tool_use_id)
    return None if value is None else str(value)


async def decided_for(conn: asyncpg.Connection, session_id: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(_DECIDED_FOR, session_id))


async def record_vote(
    conn: asyncpg.Connection,
    *,
    tenant_id: str,
    approval_id: str,
    reviewer: str,
    decision: str,
    comment: str | None,
    arguments: dict[str, Any] | None,
    arguments_hash: str | None,
) -> str | None:
    """The request's status after the vote; None if the vote changed nothing."""
    value = await conn.fetchval(
        _RECORD_VOTE,
        approval_id, tenant_id, reviewer, decision, comment,
        None if arguments is None else json.dumps(arguments), arguments_hash,
    )  # fmt: skip
    return None if value is None else str(value)


async def vote_refused(
    conn: asyncpg.Connection, tenant_id: str, approval_id: str, reviewer: str
) -> tuple[str, bool, dict[str, Any] | None]:
    """(status, past its deadline, this reviewer's recorded vote or None)."""
    row = await conn.fetchrow(_VOTE_REFUSED, approval_id, tenant_id, reviewer)
    assert row is not None  # the caller holds the session's lock; approvals go only with it
    own_vote = None if row["own_vote"] is None else json.loads(row["own_vote"])
    return str(row["status"]), bool(row["due"]), own_vote


async def pending_left(conn: asyncpg.Connection, session_id: str) -> int:
    return int(await conn.fetchval(_PENDING_LEFT, session_id))


async def lock_due_sessions(conn: asyncpg.Connection, limit: int) -> list[str]:
    return [row["session_id"] for row in await conn.fetch(_LOCK_DUE_SESSIONS, limit)]


async def expire(conn: asyncpg.Connection, session_ids: list[str]) -> list[asyncpg.Record]:
    return list(await conn.fetch(_EXPIRE, session_ids))


async def next_expiry(conn: asyncpg.Connection) -> datetime | None:
    value: datetime | None = await conn.fetchval(_NEXT_EXPIRY)
    return value


# -- the API's statements (through the tenant scope) ------------------------------------------


async def lock_session_of(
    scope: TenantScope, approval_id: str
) -> Row[str, str, str | None, str | None] | None:
    """(session_id, tool, session_created_by, the session's created_by) of the tenant's
    approval, its session row locked (see the lock order above); None if not the tenant's.

    Through the ORM on purpose: the SQLAlchemy asyncpg adapter sends BEGIN lazily, with its
    first statement, so the driver-level statements after this one run inside the request's
    transaction rather than in autocommit."""
    statement = (
        select(Approval.session_id, Approval.tool, Approval.session_created_by, Session.created_by)
        .join(Session, Session.session_id == Approval.session_id)
        .where(Approval.approval_id == approval_id, Approval.tenant_id == scope.tenant_id)
        .with_for_update(of=Session)
    )
    return (await scope.db.execute(statement)).one_or_none()


async def get(scope: TenantScope, approval_id: str) -> Row[Approval, str | None] | None:
    """The approval with its session's agent name; fresh from the database (a decision
    just changed it on the driver connection, behind the ORM's back)."""
    statement = (
        scope.select(Approval)
        .add_columns(Session.agent_name)
        .join(Session, Session.session_id == Approval.session_id)
        .where(Approval.approval_id == approval_id)
        .execution_options(populate_existing=True)
    )
    return (await scope.db.execute(statement)).one_or_none()


async def list_page(
    scope: TenantScope,
    *,
    status: str | None,
    session_id: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Row[Approval, str | None]]:
    """Oldest first; `after` is the (created_at, approval_id) of the previous page's last."""
    statement = (
        scope.select(Approval)
        .add_columns(Session.agent_name)
        .join(Session, Session.session_id == Approval.session_id)
        .order_by(Approval.created_at, Approval.approval_id)
        .limit(limit + 1)
    )
    if status is not None:
        statement = statement.where(Approval.status == status)
    if session_id is not None:
        statement = statement.where(Approval.session_id == session_id)
    if after is not None:
        created_at, approval_id = after
        statement = statement.where(
            or_(
                Approval.created_at > created_at,
                and_(Approval.created_at == created_at, Approval.approval_id > approval_id),
            )
        )
    return list((await scope.db.execute(statement)).all())

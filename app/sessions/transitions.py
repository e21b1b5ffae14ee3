"""Every write of a session's status, in one place.

Each function is one SQL statement (one round trip, atomic): the status change is checked
against the transition table (`states.ALLOWED`), fenced by the lease epoch when a worker
makes it, keeps the tenant's running count in step (claims on `tenants.claimed_sessions`,
releases on `tenant_released_sessions`), appends the `session.<status>` event
with the next `seq`, writes the session's webhook to the outbox when it finishes or starts
waiting (same transaction: never lost, never sent for a change that rolled back), and
NOTIFYs workers when a session is (re-)queued. Followers hear of every change through
Redis (`app.sessions.feed`), after the commit. They take an asyncpg connection: workers use
their own pool, API routes the raw connection under their SQLAlchemy transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from app.agents import repository as agents_repository
from app.db.payloads import compact_json
from app.observability.audit import AuditAction, AuditRecord, canonical_json, clean_payload
from app.observability.audit_linking import (
    CHAIN_LOCK_SQL,
    SessionChain,
    linked_insert_ctes,
    write_linked,
)
from app.runtime.batching import BatchedStatement, Step, StepBatcher
from app.sessions.events import NOTIFY_CHANNEL, state_event
from app.sessions.states import SessionStatus, sources_of


def _audit_status(tenant: str, session: str, actor: str, payload: str) -> str:
    """SQL appending a `session.status` audit entry (the payload: canonical JSON text, as
    `audit.canonical_json` writes it) in the statement that makes the change."""
    return (
        f"audit_append(ARRAY[{tenant}], ARRAY[{session}], ARRAY[{actor}], "
        f"ARRAY['session.status'], "
        f"ARRAY[encode(sha256(convert_to({payload}, 'UTF8')), 'hex')], ARRAY[{payload}])"
        " AS audited"
    )


_QUEUED_PAYLOAD = """'{"status":"queued"}'"""

# Claim up to $3 queued sessions whose tenant is under its running cap: priority first,
# then the tenant with the fewest running sessions (so one tenant's flood does not starve
# another), then age. Candidates come tenant by tenant from the index (a few each, locked
# with SKIP LOCKED), so a claim costs the same with 10 or 10,000 queued; the window keeps a
# batch from taking a tenant past its cap.
_CLAIM = f"""
WITH tenant_load AS (
    SELECT t.tenant_id, t.max_running_sessions,
           t.claimed_sessions - coalesce((SELECT sum(r.released) FROM tenant_released_sessions r
                                          WHERE r.tenant_id = t.tenant_id), 0) AS running_sessions
    FROM tenants t
), locked AS (
    SELECT q.session_id, q.tenant_id, q.priority, q.run_after, q.created_at,
           t.running_sessions, t.max_running_sessions
    FROM tenant_load t
    CROSS JOIN LATERAL (
        -- this tenant's first queued sessions, in index order (ix_sessions_claimable)
        SELECT s.session_id, s.tenant_id, s.priority, s.run_after, s.created_at
        FROM sessions s
        WHERE s.tenant_id = t.tenant_id AND s.status = 'queued' AND s.run_after <= now()
        ORDER BY s.priority DESC, s.run_after, s.created_at
        LIMIT GREATEST(LEAST($3, t.max_running_sessions - t.running_sessions), 0)
        FOR UPDATE OF s SKIP LOCKED
    ) q
    WHERE t.running_sessions < t.max_running_sessions
    ORDER BY q.priority DESC, t.running_sessions, q.run_after, q.created_at
    LIMIT $3 * 4
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY tenant_id ORDER BY priority DESC, run_after, created_at) AS nth
    FROM locked
), chosen AS (
    SELECT session_id, tenant_id FROM ranked
    WHERE running_sessions + nth <= max_running_sessions
    ORDER BY priority DESC, running_sessions + nth, run_after, created_at
    LIMIT $3
), counted AS (
    UPDATE tenants t SET claimed_sessions = t.claimed_sessions + c.n
    FROM (SELECT tenant_id, count(*) AS n FROM chosen GROUP BY tenant_id) c
    WHERE t.tenant_id = c.tenant_id
), claimed AS (
    UPDATE sessions s
    SET status = 'running', worker_id = $1, lease_epoch = s.lease_epoch + 1,
        lease_expires_at = now() + make_interval(secs => $2), updated_at = now(),
        event_seq = s.event_seq + 1
    FROM chosen c WHERE s.session_id = c.session_id
    RETURNING s.*
), logged AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT session_id, event_seq, '{state_event(SessionStatus.RUNNING)}',
           ('{{"status":"running","attempt":' || lease_epoch || '}}')::json
    FROM claimed
)
SELECT claimed.*, v.definition AS agent_definition,
       -- the chain's head after this entry: the worker links the run's entries itself
       audit_chain_head(claimed.tenant_id, claimed.session_id, a.audited) AS audit_head
FROM claimed
CROSS JOIN LATERAL (SELECT '{{"attempt":' || claimed.lease_epoch || ',"status":"running"}}'
                    AS payload) p
CROSS JOIN LATERAL (
    SELECT {_audit_status("claimed.tenant_id", "claimed.session_id", "'worker:' || $1", "p.payload")}
) a
LEFT JOIN agent_versions v
  ON v.agent_id = claimed.agent_id AND v.version = claimed.agent_version
"""


# A session leaving `running` counts on one of these stripes of its tenant's released count.
RELEASE_STRIPES = 64


def _release(left: str, condition: str = "true") -> str:
    """SQL giving back the tenant slot of each session in the CTE `left` (with `condition`):
    the released count's stripe of each session goes up (tenants' running count =
    `claimed_sessions` - released; migration 0012)."""
    return f"""INSERT INTO tenant_released_sessions AS r (tenant_id, stripe, released)
    SELECT tenant_id, hashtext(session_id) & {RELEASE_STRIPES - 1}, count(*)
    FROM {left} WHERE {condition}
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, stripe) DO UPDATE SET released = r.released + excluded.released"""


def _outbox(changed: str, status: str) -> str:
    """SQL writing the webhook of each session in the CTE `changed` (its rows as the change
    left them) that has a webhook URL (its own or its tenant's); `status`: SQL for the new
    status. Callers add conditions (`AND ...`)."""
    return f"""INSERT INTO webhook_outbox (delivery_id, tenant_id, session_id, event_type, url, payload)
    SELECT 'whd_' || replace(gen_random_uuid()::text, '-', ''), c.tenant_id, c.session_id,
           'session.' || {status}, COALESCE(c.webhook_url, t.webhook_url),
           jsonb_build_object(
               'type', 'session.' || {status},
               'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'data', jsonb_build_object('session', jsonb_build_object(
                   'id', c.session_id, 'agent', c.agent_name, 'agent_version', c.agent_version,
                   'status', {status}, 'result', c.result, 'error', c.error,
                   'turns', c.turns, 'metadata', c.metadata,
                   'usage', jsonb_build_object('input_tokens', c.input_tokens,
                                               'output_tokens', c.output_tokens,
                                               'cost_usd', c.cost_usd))))
    FROM {changed} c JOIN tenants t ON t.tenant_id = c.tenant_id
    WHERE COALESCE(c.webhook_url, t.webhook_url) IS NOT NULL"""


# Move one session to $2 if its status is one of $3 (and, when $4 is not null, only while
# the caller's lease epoch $4 still holds). Leaving `running` frees a tenant slot.
_CHANGE = f"""
WITH old AS (
    SELECT session_id, tenant_id, status FROM sessions
    WHERE session_id = $1 AND status = ANY($3::text[]) AND ($4::bigint IS NULL OR lease_epoch = $4)
    FOR UPDATE
), changed AS (
    UPDATE sessions s
    SET status = $2::text, event_seq = s.event_seq + 1, updated_at = now(),
        result = COALESCE($5::jsonb, s.result),
        error = CASE WHEN $7 THEN $6::jsonb ELSE s.error END,
        finished_at = CASE WHEN $2::text IN ('completed', 'failed', 'cancelled', 'timed_out') THEN now() ELSE NULL END,
        worker_id = CASE WHEN $2::text = 'running' THEN s.worker_id ELSE NULL END,
        lease_expires_at = CASE WHEN $2::text = 'running' THEN s.lease_expires_at ELSE NULL END,
        run_after = CASE WHEN $2::text = 'queued' THEN now() + make_interval(secs => $8) ELSE s.run_after END,
        cancel_requested_at = CASE WHEN $2::text = 'cancelled' THEN COALESCE(s.cancel_requested_at, now())
                                   ELSE s.cancel_requested_at END
    FROM old WHERE s.session_id = old.session_id
    RETURNING s.*, old.status AS old_status
), freed AS (
    {_release("changed", "old_status = 'running'")}
), logged AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT session_id, event_seq, ('session.' || $2::text)::session_event_type, $9::json
    FROM changed
), outboxed AS (
    -- The webhook of a finished or waiting session, in the same transaction as the change.
    {_outbox("changed", "$2::text")}
      AND $2::text IN ('completed', 'failed', 'cancelled', 'timed_out',
                       'awaiting_approval', 'awaiting_input')
)
SELECT old_status, event_seq,
       -- only a queued session wakes workers; a NOTIFY serialises the commits of every
       -- transaction that sends one (a lock held through the WAL flush), so no other
       -- status change sends one
       CASE WHEN $2::text = 'queued' THEN pg_notify($10, session_id || ':queued') END,
       -- the change on the session's audit chain, in this statement (no round trip)
       audit_append(ARRAY[tenant_id], ARRAY[session_id], ARRAY[$11::text],
                    ARRAY['session.status'], ARRAY[$12::text], ARRAY[$13::text])
FROM changed
"""

# The final answer and the completion in one statement (the common ending of a run): the
# model response ($3, usage $4-$6) becomes the next event, `session.completed` ($8, result
# $7) the one after — fenced by the lease ($2), and only while no input is queued behind
# the run (then the caller continues the run instead). The audit entries (the model call and
# the status change) are linked by the worker (`audit.linked_insert_ctes`, from $9).
COMPLETE_WITH_RESPONSE = f"""
WITH s AS (
    UPDATE sessions
    SET status = 'completed', event_seq = event_seq + 2, turns = turns + 1,
        input_tokens = input_tokens + $4, output_tokens = output_tokens + $5,
        cost_usd = cost_usd + $6, result = $7::jsonb, updated_at = now(), finished_at = now(),
        worker_id = NULL, lease_expires_at = NULL
    WHERE session_id = $1 AND lease_epoch = $2 AND status = 'running'
      AND pending_inputs = '[]'::jsonb
    RETURNING *, {CHAIN_LOCK_SQL.format(tenant="tenant_id", session="session_id")} AS chain_locked
), freed AS (
    {_release("s")}
), logged AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT $1, s.event_seq - 1, 'model.response'::session_event_type, $3::json FROM s
    UNION ALL
    SELECT $1, s.event_seq, '{state_event(SessionStatus.COMPLETED)}', $8::json FROM s
), outboxed AS (
    {_outbox("s", "'completed'")}
), {linked_insert_ctes("s", "s.tenant_id", "$1", 9)}
SELECT event_seq FROM s
"""


# The same for the sessions of a batch (`app.runtime.batching.StepBatcher`): the columns
# are the single statement's arguments $1..$8.
COMPLETE_WITH_RESPONSES = BatchedStatement(
    columns=(
        "session_id", "epoch", "response", "input_tokens", "output_tokens", "cost_usd",
        "result", "event",
    ),
    writes=f"""
s AS (
    UPDATE sessions s
    SET status = 'completed', event_seq = s.event_seq + 2, turns = s.turns + 1,
        input_tokens = s.input_tokens + i.input_tokens::bigint,
        output_tokens = s.output_tokens + i.output_tokens::bigint,
        cost_usd = s.cost_usd + i.cost_usd::numeric, result = i.result::jsonb,
        updated_at = now(), finished_at = now(), worker_id = NULL, lease_expires_at = NULL
    FROM i JOIN locked l ON l.session_id = i.session_id
    WHERE s.session_id = i.session_id AND s.lease_epoch = i.epoch::bigint
      AND s.status = 'running' AND s.pending_inputs = '[]'::jsonb
    RETURNING i.k::int AS k, s.*, {{chain_lock}} AS chain_locked
), freed AS (
    {_release("s")}
), logged AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT s.session_id, s.event_seq - 1, 'model.response'::session_event_type, i.response::json
    FROM s JOIN i ON i.k::int = s.k
    UNION ALL
    SELECT s.session_id, s.event_seq, '{state_event(SessionStatus.COMPLETED)}', i.event::json
    FROM s JOIN i ON i.k::int = s.k
), outboxed AS (
    {_outbox("s", "'completed'")}
)""",
    returning=", event_seq",
)  # fmt: skip

# Re-queue running sessions whose lease has expired (their worker died or stalled).
_REQUEUE_EXPIRED = f"""
WITH expired AS (
    SELECT session_id, tenant_id FROM sessions
    WHERE status = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at LIMIT $1
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE sessions s
    SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, run_after = now(),
        event_seq = s.event_seq + 1, updated_at = now()
    FROM expired WHERE s.session_id = expired.session_id
    RETURNING s.session_id, s.tenant_id, s.event_seq, s.lease_epoch
), freed AS (
    {_release("requeued")}
), logged AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT session_id, event_seq, 'session.queued',
           jsonb_build_object('status', 'queued', 'reason', 'lease_expired', 'attempt', lease_epoch)
    FROM requeued
)
SELECT session_id, pg_notify($2, session_id || ':queued'),
       {_audit_status("tenant_id", "session_id", "'reaper'", "p.payload")}
FROM requeued
CROSS JOIN LATERAL (SELECT '{{"attempt":' || lease_epoch
                           || ',"reason":"lease_expired","status":"queued"}}' AS payload) p
"""


@dataclass(frozen=True)
class Changed:
    old_status: SessionStatus
    event_seq: int


async def claim(
    conn: asyncpg.Connection, worker_id: str, lease_seconds: float, limit: int
) -> list[asyncpg.Record]:
    """Take up to `limit` queued sessions for `worker_id`; each comes with its agent definition."""
    return list(await conn.fetch(_CLAIM, worker_id, lease_seconds, limit))


async def change(
    conn: asyncpg.Connection,
    session_id: str,
    to: SessionStatus,
    *,
    epoch: int | None = None,
    result: Any = None,
    error: dict[str, Any] | None = None,
    set_error: bool = False,
    delay_seconds: float = 0.0,
    detail: dict[str, Any] | None = None,
    from_statuses: list[str] | None = None,
    actor: str = "platform",
) -> Changed | None:
    """Move `session_id` to `to`; None if it was not in an allowed status (or, with `epoch`,
    if the caller's lease is no longer current — the fenced-out case)."""
    allowed = from_statuses if from_statuses is not None else sources_of(to)
    data = {"status": to.value, **(detail or {})}
    if error is not None:
        data["error"] = error
    audited = canonical_json(clean_payload(data))
    row = await conn.fetchrow(
        _CHANGE,
        session_id,
        to.value,
        allowed,
        epoch,
        None if result is None else json.dumps(result),
        None if error is None else json.dumps(error),
        set_error or error is not None,
        delay_seconds,
        compact_json(data),
        NOTIFY_CHANNEL,
        actor,
        hashlib.sha256(audited.encode()).hexdigest(),
        audited,
    )
    if row is None:
        return None
    return Changed(SessionStatus(row["old_status"]), row["event_seq"])


async def complete_with_response(
    pool: asyncpg.Pool,
    chain: SessionChain,
    *,
    epoch: int,
    response: dict[str, Any],
    input_tokens: int,
    output_tokens: int,
    cost_usd: Decimal,
    result: Any,
    model_call: AuditRecord,
    batcher: StepBatcher | None = None,
) -> Changed | None:
    """Record the run's final model response and complete the session, in one statement
    and one commit (through `batcher`, with other sessions' completions, when the chain's
    head is known); None if the lease is gone or input is queued behind the run (the
    caller then looks which, and goes on)."""
    data = {"status": SessionStatus.COMPLETED.value}
    status_entry = AuditRecord(
        chain.tenant_id, chain.session_id, "platform", AuditAction.SESSION_STATUS, data
    )
    args = (
        chain.session_id, epoch, compact_json(response),
        input_tokens, output_tokens, cost_usd, json.dumps(result), compact_json(data),
    )  # fmt: skip
    audits = [model_call, status_entry]
    if batcher is not None and chain.head is not None:
        row = await batcher.write(Step(args, audits, chain))
    else:
        row = await write_linked(pool, COMPLETE_WITH_RESPONSE, args, audits, chain)
    if row is None:
        return None
    return Changed(SessionStatus.RUNNING, row["event_seq"])


async def requeue_expired(conn: asyncpg.Connection, limit: int = 100) -> list[str]:
    rows = await conn.fetch(_REQUEUE_EXPIRED, limit, NOTIFY_CHANNEL)
    return [row["session_id"] for row in rows]


async def notify_queued(conn: asyncpg.Connection, session_id: str) -> None:
    """Wake workers for a session that was just queued (delivered at commit)."""
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{session_id}:queued")


@dataclass(frozen=True)
class NewSession:
    """A session to insert in `queued` (`insert_queued`): the agent by name, as the tenant
    sees it, at `agent_version` or its current version."""

    session_id: str
    tenant_id: str
    agent_name: str
    agent_version: int | None
    priority: int
    session_input: Any
    metadata: dict[str, Any]
    subject: str | None
    created_by: str
    webhook_url: str | None
    trace_id: str


# Set-based: $1..$12 are arrays, one element per new session (`k` numbers them), so one
# statement inserts one session or a batch of them (`app.sessions.creation`).
_INSERT_QUEUED = f"""
WITH i AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
        AS i(k, session_id, tenant_id, agent_name, agent_version, priority, input, metadata,
             subject, created_by, webhook_url, trace_id)
), agent AS (
    SELECT i.k, found.* FROM i CROSS JOIN LATERAL (
        {agents_repository.for_new_session_sql("i.tenant_id", "i.agent_name", "i.agent_version")}
    ) found
), s AS (
    INSERT INTO sessions (session_id, tenant_id, agent_id, agent_name, agent_version, priority,
                          input, metadata, subject, created_by, webhook_url, trace_id,
                          deadline_at, event_seq)
    SELECT i.session_id, i.tenant_id, agent.agent_id, agent.name, agent.version, i.priority,
           i.input::jsonb, i.metadata::jsonb, i.subject, i.created_by, i.webhook_url,
           i.trace_id, now() + make_interval(secs => agent.deadline_seconds), 1
    FROM i JOIN agent ON agent.k = i.k WHERE agent.enabled
    RETURNING *
), logged AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT session_id, 1, '{state_event(SessionStatus.QUEUED)}', '{{"status":"queued"}}'::json FROM s
), audited AS (
    -- one append for all of them (each new session's chain starts here); none if none
    SELECT audit_append(
        array_agg(s.tenant_id ORDER BY s.session_id), array_agg(s.session_id ORDER BY s.session_id),
        array_agg('user:' || coalesce(s.created_by, 'unknown') ORDER BY s.session_id),
        array_fill('session.status'::text, ARRAY[count(*)::int]),
        array_fill(encode(sha256(convert_to({_QUEUED_PAYLOAD}, 'UTF8')), 'hex'), ARRAY[count(*)::int]),
        array_fill({_QUEUED_PAYLOAD}::text, ARRAY[count(*)::int])
    ) AS ids
    FROM s HAVING count(*) > 0
)
-- only what the view of a new session needs (no jsonb to decode), and the audit entries'
-- count rather than their bigint[] (a type asyncpg looks up on each new connection)
SELECT i.k, s.session_id, s.agent_name, s.agent_version, s.status, s.priority, s.parent_id,
       s.trace_id, s.created_at, s.updated_at,
       pg_notify('{NOTIFY_CHANNEL}', s.session_id || ':queued') AS notified,
       cardinality(audited.ids) AS audited
FROM s JOIN i ON i.session_id = s.session_id CROSS JOIN audited
"""


async def insert_queued(
    conn: asyncpg.Connection, sessions: list[NewSession]
) -> list[asyncpg.Record | None]:
    """The `sessions` in `queued`, each with its first event, audit entry and wake-up — one
    statement, each agent looked up in it (`agents_repository.for_new_session_sql`: its row
    read FOR SHARE). Per session its row, or None and nothing written for it if there is no
    such agent or version or it is disabled: the caller finds out which."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    for k, new in enumerate(sessions, start=1):
        values = (
            k, new.session_id, new.tenant_id, new.agent_name, new.agent_version, new.priority,
            json.dumps(new.session_input), json.dumps(new.metadata), new.subject,
            new.created_by, new.webhook_url, new.trace_id,
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    rows = {row["k"]: row for row in await conn.fetch(_INSERT_QUEUED, *columns)}
    return [rows.get(k) for k in range(1, len(sessions) + 1)]


_APPEND_USER_MESSAGE = """
WITH s AS (
    UPDATE sessions SET event_seq = event_seq + 1, updated_at = now()
    WHERE session_id = $1 AND ($3::bigint IS NULL OR lease_epoch = $3)
    RETURNING event_seq
)
INSERT INTO session_events (session_id, seq, type, data)
SELECT $1, s.event_seq, 'user.message', jsonb_build_object('input', $2::jsonb) FROM s
RETURNING seq
"""

_TAKE_PENDING_INPUTS = """
WITH old AS (
    SELECT session_id, pending_inputs FROM sessions
    WHERE session_id = $1 AND lease_epoch = $2 AND status = 'running'
    FOR UPDATE
)
UPDATE sessions s SET pending_inputs = '[]'::jsonb
FROM old WHERE s.session_id = old.session_id
RETURNING old.pending_inputs::text
"""

_QUEUE_INPUT = """
UPDATE sessions SET pending_inputs = pending_inputs || jsonb_build_array($2::jsonb), updated_at = now()
WHERE session_id = $1
"""


async def append_user_message(
    conn: asyncpg.Connection, session_id: str, session_input: Any, *, epoch: int | None = None
) -> bool:
    """Log new user input as the next `user.message` event (fenced when `epoch` is given)."""
    row = await conn.fetchrow(_APPEND_USER_MESSAGE, session_id, json.dumps(session_input), epoch)
    return row is not None


async def take_pending_inputs(
    conn: asyncpg.Connection, session_id: str, epoch: int
) -> list[Any] | None:
    """The input queued behind the current run (and clear it); None if the lease is gone."""
    row = await conn.fetchrow(_TAKE_PENDING_INPUTS, session_id, epoch)
    if row is None:
        return None
    pending: list[Any] = json.loads(row[0])
    return pending


async def queue_input(conn: asyncpg.Connection, session_id: str, session_input: Any) -> None:
    """Queue input behind the run in progress (the caller holds the session row's lock)."""
    await conn.execute(_QUEUE_INPUT, session_id, json.dumps(session_input))

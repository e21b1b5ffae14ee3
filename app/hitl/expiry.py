"""Expiry: past its deadline a pending request is settled by its gate's `on_timeout` policy
(default reject) and its session re-queued — by the worker pool, nobody polls by hand.

`expire_due` is one conditional UPDATE per batch (`status = 'pending' AND expires_at <=
now()`), the mirror of a decision's (`status = 'pending' AND expires_at > now()`), under the
session row lock a decision also takes: a decision racing the expiry cannot both win.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.hitl import repository
from app.hitl.service import PLATFORM_ACTOR, requeue_if_settled
from app.observability import audit
from app.observability.audit import AuditAction, AuditRecord


async def expire_due(conn: asyncpg.Connection, limit: int = 100) -> list[str]:
    """Expire the due requests of up to `limit` sessions; returns the ids of the sessions
    re-queued (those with nothing pending left that were awaiting approval). Runs in a
    transaction of its own (a savepoint if the caller is already in one)."""
    async with conn.transaction():
        session_ids = await repository.lock_due_sessions(conn, limit)
        if not session_ids:
            return []
        # approval id → the policy applied, per session
        outcomes: dict[str, dict[str, str]] = {}
        expired = await repository.expire(conn, session_ids)
        for row in expired:
            outcomes.setdefault(row["session_id"], {})[row["approval_id"]] = row["on_timeout"]
        requeued = []
        for session_id, on_timeout in sorted(outcomes.items()):
            detail = {"reason": "approval_expired", "on_timeout": on_timeout}
            if await requeue_if_settled(conn, session_id, detail):
                requeued.append(session_id)
        await audit.append(
            conn,
            [
                AuditRecord(
                    row["tenant_id"],
                    row["session_id"],
                    PLATFORM_ACTOR,
                    AuditAction.APPROVAL_DECIDED,
                    {
                        "approval_id": row["approval_id"],
                        "tool": row["tool"],
                        "status": "expired",
                        "on_timeout": row["on_timeout"],
                    },
                )
                for row in expired
            ],
        )
        return requeued


async def next_expiry_at(conn: asyncpg.Connection) -> datetime | None:
    """The soonest deadline of any pending request (None if nothing is pending): an expiry
    loop can sleep until then (capped), waking early on a NOTIFY of `APPROVALS_CHANNEL`."""
    return await repository.next_expiry(conn)

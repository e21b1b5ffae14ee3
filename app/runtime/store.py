"""The worker's Postgres access: every durable step is one fenced statement.

"Fenced" means each write is conditioned on `lease_epoch = <the epoch this worker claimed>`
and `status = 'running'` inside the statement that makes it, so a worker that lost its
lease (paused, partitioned, presumed dead) writes nothing and learns it (`LeaseLost`).
Event numbering (`sessions.event_seq`) is bumped by the same statement.

Raw asyncpg rather than the ORM: this is the hot path (a few statements per turn).
Status changes go through `app.sessions.transitions`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from app.db.payloads import compact_json
from app.observability import audit, audit_linking
from app.runtime.batching import BatchedStatement, Step, StepBatcher
from app.sessions import transitions


class LeaseLost(Exception):
    """This worker's lease on the session is gone; it must stop without writing."""


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return (
        make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


async def _keep_session_state(_connection: asyncpg.Connection) -> None:
    """Pool connections carry no session state (no LISTEN, advisory locks or SET), so
    skip asyncpg's default reset query: it would cost a round trip per statement."""


async def create_pool(database_url: str, *, max_size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=max_size,
        max_size=max_size,
        reset=_keep_session_state,
        server_settings={
            "application_name": "agent-platform-worker",
            # The worker's statements are fixed and keyed by primary keys (or the claim's
            # index walk), so one plan serves every value: plan each once per connection
            # instead of five custom plans first (planning was a sixth of PostgreSQL's time
            # per session).
            "plan_cache_mode": "force_generic_plan",
        },
    )
    assert pool is not None
    return pool


_RECORD_RESPONSE = """
WITH s AS (
    UPDATE sessions
    SET event_seq = event_seq + 1, turns = turns + 1, input_tokens = input_tokens + $4,
        output_tokens = output_tokens + $5, cost_usd = cost_usd + $6, updated_at = now()
    WHERE session_id = $1 AND lease_epoch = $2 AND status = 'running'
    RETURNING event_seq, turns
), e AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT $1, s.event_seq, 'model.response', $3::json FROM s
), t AS (
    INSERT INTO tool_calls (session_id, tool_use_id, turn, tool, arguments,
                            status, attempts, idempotent, error, finished_at)
    SELECT $1, x.tool_use_id, s.turns, x.tool, x.arguments, x.status, 0,
           x.idempotent, x.error,
           CASE WHEN x.status IN ('started', 'awaiting_approval') THEN NULL ELSE now() END
    FROM s, json_to_recordset($7::json) AS x(tool_use_id text, tool text,
         arguments json, status text, idempotent boolean, error text)
)
SELECT event_seq, turns FROM s
"""

_RECORD_TOOL_RESULT = """
WITH s AS (
    UPDATE sessions SET event_seq = event_seq + 1, updated_at = now()
    WHERE session_id = $1 AND lease_epoch = $2 AND status = 'running'
    RETURNING event_seq
), t AS (
    UPDATE tool_calls c
    SET status = $4, result = $5::json, error = $6, attempts = c.attempts + $7, finished_at = now()
    FROM s WHERE c.session_id = $1 AND c.tool_use_id = $3
), e AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT $1, s.event_seq, 'tool.result', $8::json FROM s
)
SELECT event_seq FROM s
"""


def _audited(statement: str, final: str, first: int) -> str:
    """`statement` whose final SELECT also appends audit entries (`audit_append`, the six
    arrays from `audit.append_arguments` at $first…): one statement, no extra round trip,
    and nothing audited when the fenced write matched nothing. For steps inside a larger
    transaction (a conflict there could not be retried on its own)."""
    assert statement.rstrip().endswith(final)
    arrays = ", ".join(f"${first + i}::text[]" for i in range(6))
    return statement.rstrip()[: -len(final)] + final.replace(
        " FROM s", f", audit_append({arrays}) FROM s"
    )


def _linked(statement: str, returning: str, final: str, first: int) -> str:
    """`statement` that also writes audit entries linked by this worker
    (`audit_linking.linked_arguments` at $first…): the fenced UPDATE takes the chain's lock once it
    holds the session row, and the entries are plain INSERTs gated by it."""
    assert statement.count(returning) == 1 and statement.rstrip().endswith(final)
    lock = audit_linking.CHAIN_LOCK_SQL.format(tenant="tenant_id", session="session_id")
    statement = statement.replace(returning, f"{returning}, tenant_id, {lock} AS chain_locked")
    ctes = audit_linking.linked_insert_ctes("s", "s.tenant_id", "$1", first)
    return statement.rstrip()[: -len(final)].rstrip() + f", {ctes}\n{final}"


_RECORD_RESPONSE_AUDITED = _audited(_RECORD_RESPONSE, "SELECT event_seq, turns FROM s", 8)
_RECORD_RESPONSE_LINKED = _linked(
    _RECORD_RESPONSE, "RETURNING event_seq, turns", "SELECT event_seq, turns FROM s", 8
)
_RECORD_TOOL_RESULT_AUDITED = _audited(_RECORD_TOOL_RESULT, "SELECT event_seq FROM s", 9)
_RECORD_TOOL_RESULT_LINKED = _linked(
    _RECORD_TOOL_RESULT, "RETURNING event_seq", "SELECT event_seq FROM s", 9
)

# The same two steps for the sessions of a batch (`batching.StepBatcher`).
_RECORD_RESPONSES = BatchedStatement(
    columns=(
        "session_id", "epoch", "response", "input_tokens", "output_tokens", "cost_usd", "calls",
    ),
    writes="""
s AS (
    UPDATE sessions s
    SET event_seq = s.event_seq + 1, turns = s.turns + 1,
        input_tokens = s.input_tokens + i.input_tokens::bigint,
        output_tokens = s.output_tokens + i.output_tokens::bigint,
        cost_usd = s.cost_usd + i.cost_usd::numeric, updated_at = now()
    FROM i JOIN locked l ON l.session_id = i.session_id
    WHERE s.session_id = i.session_id AND s.lease_epoch = i.epoch::bigint AND s.status = 'running'
    RETURNING i.k::int AS k, s.session_id, s.tenant_id, s.event_seq, s.turns,
              {chain_lock} AS chain_locked
), e AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT s.session_id, s.event_seq, 'model.response', i.response::json
    FROM s JOIN i ON i.k::int = s.k
), t AS (
    INSERT INTO tool_calls (session_id, tool_use_id, turn, tool, arguments,
                            status, attempts, idempotent, error, finished_at)
    SELECT s.session_id, x.tool_use_id, s.turns, x.tool, x.arguments, x.status, 0,
           x.idempotent, x.error,
           CASE WHEN x.status IN ('started', 'awaiting_approval') THEN NULL ELSE now() END
    FROM s JOIN i ON i.k::int = s.k
    CROSS JOIN LATERAL json_to_recordset(i.calls::json) AS x(tool_use_id text, tool text,
         arguments json, status text, idempotent boolean, error text)
)""",
    returning=", turns",
)  # fmt: skip

_RECORD_TOOL_RESULTS = BatchedStatement(
    columns=(
        "session_id", "epoch", "tool_use_id", "status", "result", "error", "attempts", "event",
    ),
    writes="""
s AS (
    UPDATE sessions s SET event_seq = s.event_seq + 1, updated_at = now()
    FROM i JOIN locked l ON l.session_id = i.session_id
    WHERE s.session_id = i.session_id AND s.lease_epoch = i.epoch::bigint AND s.status = 'running'
    RETURNING i.k::int AS k, s.session_id, s.tenant_id, s.event_seq,
              {chain_lock} AS chain_locked
), t AS (
    UPDATE tool_calls c
    SET status = i.status, result = i.result::json, error = i.error,
        attempts = c.attempts + i.attempts::int, finished_at = now()
    FROM s JOIN i ON i.k::int = s.k
    WHERE c.session_id = s.session_id AND c.tool_use_id = i.tool_use_id
), e AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT s.session_id, s.event_seq, 'tool.result', i.event::json
    FROM s JOIN i ON i.k::int = s.k
)""",
)  # fmt: skip

# A reviewer approved a parked call: it is `started` now, with the approved arguments
# (fenced; only from awaiting_approval, so it can start once).
_START_APPROVED = """
UPDATE tool_calls c SET status = 'started', arguments = $4::json
FROM sessions s
WHERE c.session_id = $1 AND c.tool_use_id = $3 AND c.status = 'awaiting_approval'
  AND s.session_id = $1 AND s.lease_epoch = $2 AND s.status = 'running'
RETURNING c.tool_use_id
"""

_RECORD_NOTE = """
WITH s AS (
    UPDATE sessions SET event_seq = event_seq + 1, updated_at = now()
    WHERE session_id = $1 AND lease_epoch = $2 AND status = 'running'
    RETURNING event_seq
)
INSERT INTO session_events (session_id, seq, type, data)
SELECT $1, s.event_seq, 'platform.note', $3::json FROM s
RETURNING seq
"""

_CANCEL_UNSTARTED = """
UPDATE tool_calls c SET status = 'cancelled', error = 'cancelled before it ran', finished_at = now()
FROM sessions s
WHERE c.session_id = $1 AND c.status = 'started'
  AND s.session_id = $1 AND s.lease_epoch = $2 AND s.status = 'running'
"""

# Extends the leases still held. `{skip}` empty: waits for rows a step is writing;
# `SKIP LOCKED`: passes them by (see `RuntimeStore.heartbeat`).
_HEARTBEAT = """
WITH mine AS (
    SELECT s.session_id FROM sessions s
    JOIN unnest($1::text[], $2::bigint[]) AS held(session_id, epoch)
      ON s.session_id = held.session_id AND s.lease_epoch = held.epoch
    WHERE s.status = 'running' AND s.worker_id = $4
    ORDER BY s.session_id  -- the order the step batches lock in (no deadlock between them)
    FOR NO KEY UPDATE OF s {skip}
)
UPDATE sessions s SET lease_expires_at = now() + make_interval(secs => $3)
FROM mine WHERE s.session_id = mine.session_id
RETURNING s.session_id, s.cancel_requested_at IS NOT NULL AS cancel_requested
"""
_HEARTBEAT_WAITING = _HEARTBEAT.format(skip="")
_HEARTBEAT_PASSING_BUSY = _HEARTBEAT.format(skip="SKIP LOCKED")
# Passes over busy rows before the last (waiting) pass, and the pause between passes.
HEARTBEAT_PASSES = 4
HEARTBEAT_PASS_PAUSE_SECONDS = 0.02

_HISTORY = """
SELECT type, data FROM session_events
WHERE session_id = $1 AND type IN ('model.response', 'platform.note', 'user.message')
ORDER BY seq
"""

_TOOL_CALLS = """
SELECT tool_use_id, tool, arguments, status, result, error, attempts, idempotent
FROM tool_calls WHERE session_id = $1
"""


@dataclass(frozen=True)
class ToolCallRecord:
    tool_use_id: str
    tool: str
    arguments: dict[str, Any]
    status: str
    result: Any
    error: str | None
    attempts: int
    idempotent: bool


@dataclass
class PlannedCall:
    """A tool call as recorded with its model response: `started` (about to run) or already
    settled without running (`failed` invalid input, `denied` tool not allowed)."""

    tool_use_id: str
    tool: str
    arguments: dict[str, Any]
    status: str
    idempotent: bool
    error: str | None = None
    confidence: float | None = None  # the agent's stated confidence (confidence gates)

    def as_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class RuntimeStore:
    def __init__(self, pool: asyncpg.Pool, announce: Callable[[str], None] | None = None) -> None:
        self.pool = pool
        self._announce = announce
        self.responses = self._batcher("model_response", _RECORD_RESPONSES, _RECORD_RESPONSE_LINKED)
        self.tool_results = self._batcher(
            "tool_result", _RECORD_TOOL_RESULTS, _RECORD_TOOL_RESULT_LINKED
        )
        self.completions = self._batcher(
            "completion", transitions.COMPLETE_WITH_RESPONSES, transitions.COMPLETE_WITH_RESPONSE
        )

    def _batcher(self, kind: str, statement: BatchedStatement, single: str) -> StepBatcher:
        async def write_one(step: Step) -> asyncpg.Record | None:
            return await audit_linking.write_linked(
                self.pool, single, step.args, step.audits, step.chain
            )

        return StepBatcher(kind, self.pool, statement, write_one)

    def announce(self, session_id: str) -> None:
        """Tell followers the session has new events (after the write committed)."""
        if self._announce is not None:
            self._announce(session_id)

    async def record_model_response(
        self,
        session_id: str,
        epoch: int,
        response: dict[str, Any],
        calls: list[PlannedCall],
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: Decimal,
        connection: asyncpg.Connection | None = None,
        audits: Sequence[audit.AuditRecord] = (),
        chain: audit_linking.SessionChain | None = None,
    ) -> int:
        """Persist a model response and its tool calls; returns the session's turn count."""
        args: tuple[Any, ...] = (
            session_id, epoch, compact_json(response), input_tokens, output_tokens, cost_usd,
            compact_json([call.as_json() for call in calls]),
        )  # fmt: skip
        row = await self._write_step(
            (_RECORD_RESPONSE, _RECORD_RESPONSE_AUDITED, _RECORD_RESPONSE_LINKED),
            args, audits, chain, connection, self.responses,
        )  # fmt: skip
        if row is None:
            raise LeaseLost(session_id)
        if connection is None:
            self.announce(session_id)
        return int(row["turns"])

    async def _write_step(
        self,
        statements: tuple[str, str, str],
        args: tuple[Any, ...],
        audits: Sequence[audit.AuditRecord],
        chain: audit_linking.SessionChain | None,
        connection: asyncpg.Connection | None,
        batcher: StepBatcher | None = None,
    ) -> asyncpg.Record | None:
        """Run a step's statement (bare, audited by `audit_append()`, or with entries linked
        here: `statements` in that order); its row, None when the fence matched nothing.
        Linked needs the session's chain and a statement of its own (a conflict with a stale
        head is retried, which a larger transaction could not do); with the chain's head
        known it goes through `batcher`, with the same step of other sessions."""
        bare, audited, linked = statements
        executor = connection if connection is not None else self.pool
        if not audits:
            return await executor.fetchrow(bare, *args)
        if connection is not None or chain is None or not chain.holds(audits):
            if chain is not None:
                chain.head = None  # audit_append() may move it
            return await executor.fetchrow(audited, *args, *audit.append_arguments(audits))
        if batcher is not None and chain.head is not None:
            return await batcher.write(Step(args, audits, chain))
        return await audit_linking.write_linked(self.pool, linked, args, audits, chain)

    async def start_approved_call(
        self, session_id: str, epoch: int, tool_use_id: str, arguments: dict[str, Any]
    ) -> None:
        row = await self.pool.fetchrow(
            _START_APPROVED, session_id, epoch, tool_use_id, compact_json(arguments)
        )
        if row is None:
            raise LeaseLost(session_id)

    async def record_tool_result(
        self,
        session_id: str,
        epoch: int,
        tool_use_id: str,
        *,
        status: str,
        result: Any,
        error: str | None,
        attempts: int,
        event: dict[str, Any],
        audits: Sequence[audit.AuditRecord] = (),
        chain: audit_linking.SessionChain | None = None,
    ) -> None:
        """Settle a tool call in the ledger with its `tool.result` event and audit entries."""
        args: tuple[Any, ...] = (
            session_id, epoch, tool_use_id, status,
            None if result is None else compact_json(result), error, attempts, compact_json(event),
        )  # fmt: skip
        row = await self._write_step(
            (_RECORD_TOOL_RESULT, _RECORD_TOOL_RESULT_AUDITED, _RECORD_TOOL_RESULT_LINKED),
            args, audits, chain, None, self.tool_results,
        )  # fmt: skip
        if row is None:
            raise LeaseLost(session_id)
        self.announce(session_id)

    async def record_note(self, session_id: str, epoch: int, note: dict[str, Any]) -> None:
        if await self.pool.fetchrow(_RECORD_NOTE, session_id, epoch, compact_json(note)) is None:
            raise LeaseLost(session_id)
        self.announce(session_id)

    async def cancel_unstarted_calls(
        self, session_id: str, epoch: int, *, connection: asyncpg.Connection
    ) -> None:
        """Mark the session's `started` tool calls `cancelled` (fenced)."""
        await connection.execute(_CANCEL_UNSTARTED, session_id, epoch)

    async def heartbeat(
        self,
        worker_id: str,
        leases: dict[str, int],
        ttl_seconds: float,
        *,
        pool: asyncpg.Pool | None = None,
    ) -> dict[str, bool]:
        """Extend the leases still held; returns {session_id: cancel_requested} for those.

        A session whose step is being written holds its row for a moment. Waiting for it
        would keep every row already extended locked meanwhile, so the sessions of a busy
        worker (a thousand of them) queued behind the heartbeat: the first passes skip busy
        rows and come back for them, and only the last waits, for the few still busy."""
        held: dict[str, bool] = {}
        remaining = dict(leases)
        for attempt in range(HEARTBEAT_PASSES + 1):
            if not remaining:
                break
            if attempt:
                await asyncio.sleep(HEARTBEAT_PASS_PAUSE_SECONDS)
            statement = (
                _HEARTBEAT_WAITING if attempt == HEARTBEAT_PASSES else _HEARTBEAT_PASSING_BUSY
            )
            ids = list(remaining)
            rows = await (pool or self.pool).fetch(
                statement, ids, [remaining[i] for i in ids], ttl_seconds, worker_id
            )
            for row in rows:
                held[row["session_id"]] = row["cancel_requested"]
                del remaining[row["session_id"]]
        return held

    async def history(
        self, session_id: str
    ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, ToolCallRecord]]:
        async with self.pool.acquire() as connection:
            events = await connection.fetch(_HISTORY, session_id)
            calls = await connection.fetch(_TOOL_CALLS, session_id)
        return (
            [(row["type"], json.loads(row["data"])) for row in events],
            {
                row["tool_use_id"]: ToolCallRecord(
                    tool_use_id=row["tool_use_id"],
                    tool=row["tool"],
                    arguments=json.loads(row["arguments"]),
                    status=row["status"],
                    result=None if row["result"] is None else json.loads(row["result"]),
                    error=row["error"],
                    attempts=row["attempts"],
                    idempotent=row["idempotent"],
                )
                for row in calls
            },
        )

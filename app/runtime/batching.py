"""Tool results of many sessions written by one statement (group commit for steps).

Under load a worker records tool results of dozens of sessions at once, each a statement
and a commit of its own. `ToolResultBatcher` writes the ones waiting together: the first
result goes out at once (no added latency when the worker is quiet); while that statement
runs, others queue, and the next statement takes them all — at most one per session, so
each session's events keep their order and its audit chain its links. Each session's
write is still fenced on its own lease (a session whose lease is gone is left out and its
caller learns `LeaseLost`) and durable before its caller goes on.

If the statement fails as a whole — an audit head went stale (a reviewer's decision was
appended meanwhile) or anything else — nothing of it was written, and every result of the
batch is written again on its own by the single-step path, which knows how to retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.observability import audit

# Columns of one tool result, in the order of the statement's first eight parameters.
_RESULTS = """
WITH i AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[])
        AS i(k, session_id, epoch, tool_use_id, status, result, error, attempts)
), locked AS (
    -- rows locked in id order, as the heartbeat locks them: the two never deadlock
    SELECT s.session_id FROM sessions s JOIN i ON s.session_id = i.session_id
    WHERE s.lease_epoch = i.epoch::bigint AND s.status = 'running'
    ORDER BY s.session_id
    FOR NO KEY UPDATE OF s
), s AS (
    UPDATE sessions s SET event_seq = s.event_seq + 1, updated_at = now()
    FROM i JOIN locked l ON l.session_id = i.session_id
    WHERE s.session_id = i.session_id AND s.lease_epoch = i.epoch::bigint
      AND s.status = 'running'
    RETURNING i.k::int AS k, s.session_id, s.tenant_id, s.event_seq,
              {lock} AS chain_locked
), t AS (
    UPDATE tool_calls c
    SET status = i.status, result = i.result::json, error = i.error,
        attempts = c.attempts + i.attempts::int, finished_at = now()
    FROM s JOIN i ON i.k::int = s.k
    WHERE c.session_id = s.session_id AND c.tool_use_id = i.tool_use_id
), e AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT s.session_id, s.event_seq, 'tool.result', ev.data::json
    FROM s JOIN unnest($9::text[], $10::text[]) AS ev(k, data) ON ev.k::int = s.k
), {audit_ctes}
SELECT k FROM s
""".format(
    lock=audit.CHAIN_LOCK_SQL.format(tenant="s.tenant_id", session="s.session_id"),
    audit_ctes=audit.linked_batch_insert_ctes("s", 11),
)


@dataclass
class ToolResult:
    """One session's tool result as the single-step statement takes it (`args`: session,
    epoch, tool_use_id, status, result JSON, error, attempts, event JSON)."""

    args: tuple[Any, ...]
    audits: list[audit.AuditRecord]
    chain: audit.SessionChain
    written: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def session_id(self) -> str:
        return str(self.args[0])


class ToolResultBatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        write_one: Callable[[ToolResult], Awaitable[bool]],
        max_batch: int = 64,
    ) -> None:
        self.pool = pool
        self._write_one = write_one  # the single-step path: True if the fence matched
        self.max_batch = max_batch
        self._waiting: list[ToolResult] = []
        self._flushing: asyncio.Task[None] | None = None
        self.statements = 0  # batch statements sent (for tests and figures)

    async def write(self, result: ToolResult) -> bool:
        """Write `result` (with the others waiting); True if its fence matched."""
        self._waiting.append(result)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await asyncio.shield(result.written)

    async def _flush(self) -> None:
        batch: list[ToolResult] = []
        try:
            while self._waiting:
                batch, later, sessions = [], [], set()
                for result in self._waiting:
                    if result.session_id in sessions or len(batch) >= self.max_batch:
                        later.append(result)
                    else:
                        sessions.add(result.session_id)
                        batch.append(result)
                self._waiting = later
                await self._write(batch)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            for result in [*batch, *self._waiting]:
                if not result.written.done():
                    result.written.set_exception(exc)
            self._waiting = []
            raise

    async def _write(self, batch: list[ToolResult]) -> None:
        if len(batch) == 1 or any(r.chain.head is None for r in batch):
            await self._one_by_one(batch)
            return
        at = datetime.now(UTC)
        arguments, heads = audit.linked_batch_arguments(
            [(r.audits, r.chain.head) for r in batch if r.chain.head is not None], at
        )
        columns: list[list[str | None]] = [[] for _ in range(8)]
        events: list[list[str]] = [[], []]
        for k, result in enumerate(batch, start=1):
            session_id, epoch, tool_use_id, status, result_json, error, attempts, event = (
                result.args
            )
            row = (str(k), session_id, str(epoch), tool_use_id, status, result_json, error,
                   str(attempts))  # fmt: skip
            for column, value in zip(columns, row, strict=True):
                column.append(value)
            events[0].append(str(k))
            events[1].append(event)
        try:
            rows = await self.pool.fetch(_RESULTS, *columns, *events, *arguments)
        except asyncpg.PostgresError:
            # Nothing of the statement was written: each result goes again on its own.
            await self._one_by_one(batch)
            return
        except Exception as exc:  # the connection: each caller learns it
            for result in batch:
                result.written.set_exception(exc)
            return
        self.statements += 1
        matched = {row["k"] for row in rows}
        for k, (result, head) in enumerate(zip(batch, heads, strict=True), start=1):
            if k in matched:
                result.chain.head = head
            result.written.set_result(k in matched)

    async def _one_by_one(self, batch: list[ToolResult]) -> None:
        for result in batch:
            try:
                result.written.set_result(await self._write_one(result))
            except Exception as exc:
                result.written.set_exception(exc)

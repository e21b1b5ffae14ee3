"""Steps of many sessions written by one statement (group commit for steps).

Under load a worker records the steps of dozens of sessions at once. A `StepBatcher` (an
`app.db.batching.StatementBatcher`) writes the steps of one kind (model responses, tool
results) that wait together as one statement — at most one per session, so each session's
events keep their order and its audit chain its links. Each session's write is still
fenced on its own lease (a session whose lease is gone is left out: its caller gets None
and raises `LeaseLost`) and durable before its caller goes on. Rows are locked in
session-id order, as the heartbeat locks them.

If the statement fails as a whole — an audit head went stale (a reviewer's decision was
appended meanwhile) or anything else PostgreSQL refuses — nothing of it was written, and
every step of the batch is written again on its own by the single-step path, which knows
how to retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.db.batching import StatementBatcher
from app.observability import audit, audit_linking


@dataclass(frozen=True)
class BatchedStatement:
    """A step's statement for many sessions: `columns` name its per-step values (text,
    in the order of the single-step statement's arguments, which start with session_id and
    epoch), `writes` the SQL run on the CTEs `i` (the steps: `k`, then `columns`) and `s`
    (the sessions whose fence matched: `k`, session_id, tenant_id, event_seq, turns), and
    `returning` what each matched step's row gives back besides `k`. `s` takes the
    session's audit-chain lock: `{chain_lock}` in `writes` stands for it."""

    columns: tuple[str, ...]
    writes: str
    returning: str = ""

    def sql(self) -> str:
        count = len(self.columns) + 1
        unnest = ", ".join(f"${n}::text[]" for n in range(1, count + 1))
        lock = audit_linking.CHAIN_LOCK_SQL.format(tenant="s.tenant_id", session="s.session_id")
        return f"""
WITH i AS (
    SELECT * FROM unnest({unnest}) AS i(k, {", ".join(self.columns)})
), locked AS (
    SELECT s.session_id FROM sessions s JOIN i ON s.session_id = i.session_id
    WHERE s.lease_epoch = i.epoch::bigint AND s.status = 'running'
    ORDER BY s.session_id
    FOR NO KEY UPDATE OF s
), {self.writes.strip().replace("{chain_lock}", lock)},
{audit_linking.linked_batch_insert_ctes("s", count + 1)}
SELECT k{self.returning} FROM s
"""


@dataclass
class Step:
    """One session's step: `args` as the single-step statement takes them (session_id and
    epoch first), its audit entries and the session's chain (its head known)."""

    args: tuple[Any, ...]
    audits: Sequence[audit.AuditRecord]
    chain: audit_linking.SessionChain

    @property
    def session_id(self) -> str:
        return str(self.args[0])


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class StepBatcher(StatementBatcher[Step, asyncpg.Record | None]):
    def __init__(
        self,
        kind: str,
        pool: asyncpg.Pool,
        statement: BatchedStatement,
        write_one: Callable[[Step], Awaitable[asyncpg.Record | None]],
        max_batch: int = 64,
    ) -> None:
        super().__init__(kind, max_batch)
        self.pool = pool
        self.statement = statement
        self._sql = statement.sql()
        self._write_step = write_one  # the single-step path: its row, None if fenced out

    def key(self, item: Step) -> Hashable:
        return item.session_id

    def batchable(self, items: Sequence[Step]) -> bool:
        return all(step.chain.head is not None for step in items)

    async def write_one(self, item: Step) -> asyncpg.Record | None:
        return await self._write_step(item)

    async def write_batch(self, items: Sequence[Step]) -> list[asyncpg.Record | None]:
        heads = [step.chain.head for step in items]
        arguments, after = audit_linking.linked_batch_arguments(
            [(step.audits, head) for step, head in zip(items, heads, strict=True) if head],
            datetime.now(UTC),
        )
        columns: list[list[str | None]] = [[] for _ in range(len(self.statement.columns) + 1)]
        for k, step in enumerate(items, start=1):
            for column, value in zip(columns, (k, *step.args), strict=True):
                column.append(_text(value))
        rows = await self.pool.fetch(self._sql, *columns, *arguments)
        matched = {row["k"]: row for row in rows}
        results: list[asyncpg.Record | None] = []
        for k, (step, head) in enumerate(zip(items, after, strict=True), start=1):
            row = matched.get(k)
            if row is not None:
                step.chain.head = head
            results.append(row)
        return results

"""Steps of many sessions written by one statement (group commit for steps).

Under load a worker records the steps of dozens of sessions at once, each a statement and a
commit of its own. A `StepBatcher` writes the steps of one kind (model responses, tool
results) that wait together: the first goes out at once (no added latency when the worker
is quiet); while that statement runs, others queue, and the next statement takes them all —
at most one per session, so each session's events keep their order and its audit chain its
links. Each session's write is still fenced on its own lease (a session whose lease is gone
is left out: its caller gets None and raises `LeaseLost`) and durable before its caller
goes on. Rows are locked in session-id order, as the heartbeat locks them.

If the statement fails as a whole — an audit head went stale (a reviewer's decision was
appended meanwhile) or anything else PostgreSQL refuses — nothing of it was written, and
every step of the batch is written again on its own by the single-step path, which knows
how to retry.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

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
    written: asyncio.Future[asyncpg.Record | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def session_id(self) -> str:
        return str(self.args[0])


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class StepBatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        statement: BatchedStatement,
        write_one: Callable[[Step], Awaitable[asyncpg.Record | None]],
        max_batch: int = 64,
    ) -> None:
        self.pool = pool
        self.statement = statement
        self._sql = statement.sql()
        self._write_one = write_one  # the single-step path: its row, None if fenced out
        self.max_batch = max_batch
        self._waiting: list[Step] = []
        self._flushing: asyncio.Task[None] | None = None
        self.statements = 0  # batch statements that went through (for tests and figures)

    async def write(self, step: Step) -> asyncpg.Record | None:
        """Write `step` (with the others waiting); its row, None if its fence failed."""
        self._waiting.append(step)
        if self._flushing is None or self._flushing.done():
            # a context of its own: it writes for many sessions, not for the one whose
            # write happened to start it (its log lines carry no session id)
            self._flushing = asyncio.create_task(self._flush(), context=contextvars.Context())
        return await asyncio.shield(step.written)

    async def _flush(self) -> None:
        batch: list[Step] = []
        try:
            while self._waiting:
                batch, later, sessions = [], [], set()
                for step in self._waiting:
                    if step.session_id in sessions or len(batch) >= self.max_batch:
                        later.append(step)
                    else:
                        sessions.add(step.session_id)
                        batch.append(step)
                self._waiting = later
                await self._write(batch)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            for step in [*batch, *self._waiting]:
                if not step.written.done():
                    step.written.set_exception(exc)
            self._waiting = []
            raise

    async def _write(self, batch: list[Step]) -> None:
        heads = [step.chain.head for step in batch]
        if len(batch) == 1 or any(head is None for head in heads):
            await self._one_by_one(batch)
            return
        arguments, after = audit_linking.linked_batch_arguments(
            [(step.audits, head) for step, head in zip(batch, heads, strict=True) if head],
            datetime.now(UTC),
        )
        columns: list[list[str | None]] = [[] for _ in range(len(self.statement.columns) + 1)]
        for k, step in enumerate(batch, start=1):
            for column, value in zip(columns, (k, *step.args), strict=True):
                column.append(_text(value))
        try:
            rows = await self.pool.fetch(self._sql, *columns, *arguments)
        except asyncpg.PostgresError:
            # Nothing of the statement was written: each step goes again on its own.
            await self._one_by_one(batch)
            return
        except Exception as exc:  # the connection: each caller learns it
            for step in batch:
                step.written.set_exception(exc)
            return
        self.statements += 1
        matched = {row["k"]: row for row in rows}
        for k, (step, head) in enumerate(zip(batch, after, strict=True), start=1):
            row = matched.get(k)
            if row is not None:
                step.chain.head = head
            step.written.set_result(row)

    async def _one_by_one(self, batch: list[Step]) -> None:
        for step in batch:
            try:
                step.written.set_result(await self._write_one(step))
            except Exception as exc:  # handed to the step's caller
                step.written.set_exception(exc)

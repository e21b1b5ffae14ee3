"""Audit entries linked by the worker that holds a session's lease (see docs/audit.md).

A worker holding a session's lease links that session's entries itself: it knows the
chain's head (the claim returns it, `audit_chain_head()`), hashes here and writes plain
INSERTs inside the statement of the step they record — no function call, no head read.
The statement takes the chain's advisory lock (the one `audit_append()` takes) after the
session's row lock and before its INSERTs, so appends of other processes (a reviewer's
decision, an approval's expiry) serialise with it; if one came first, the head known here
is stale and the unique (tenant, session, chain_seq) index refuses the rows: the statement
runs again under the chain's lock with the head read afresh (`write_linked`). A fork
cannot be committed. Steps of several sessions written together (`app/runtime/batching.py`)
link each session's entries into its own chain (`linked_batch_*`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.observability.audit import AuditRecord, canonical_json, clean_payload, entry_hash


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last entry of a session's chain: its `chain_seq` and `entry_hash`."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> ChainHead:
        """From `audit_chain_head()`'s `<chain_seq>:<entry_hash>`."""
        seq, _, entry = text.partition(":")
        return cls(int(seq), entry)


CHAIN_LOCK_SQL = (
    "pg_advisory_xact_lock(hashtextextended('audit:' || {tenant} || ':' || {session}, 0))"
)
_CHAIN_CONSTRAINT = "uq_audit_log_tenant_id_session_id_chain_seq"


def _audit_ctes(rows: str, entry_hashes: str, payloads: str) -> str:
    """The CTEs `audit_rows` (inserting `rows`: a SELECT of the audit_log columns below)
    and `audit_payload_rows` (each entry's payload, matched by its entry hash)."""
    return f"""audit_rows AS (
    INSERT INTO audit_log (tenant_id, session_id, chain_seq, actor, action, payload_hash,
                           prev_hash, entry_hash, created_at)
    {rows.strip()}
    RETURNING audit_id, entry_hash
), audit_payload_rows AS (
    INSERT INTO audit_payloads (audit_id, payload)
    SELECT r.audit_id, p.payload::jsonb
    FROM audit_rows r JOIN unnest({entry_hashes}::text[], {payloads}::text[])
         AS p(entry_hash, payload)
      ON p.entry_hash = r.entry_hash
)"""


def linked_insert_ctes(source: str, tenant: str, session: str, first: int) -> str:
    """Two CTEs (`audit_rows`, `audit_payload_rows`) writing entries linked by
    `linked_arguments` (its eight parameters from `$first`), one row per row of `source`
    (a fenced CTE yielding one row, or none: then nothing is written). `tenant`, `session`:
    SQL for the chain's ids. (Chain positions are the head's + each entry's ordinal: no
    bigint[] parameter, whose codec asyncpg would look up on every new connection.)"""
    p = [f"${first + i}" for i in range(8)]
    rows = f"""
    SELECT {tenant}, {session}, {p[0]}::bigint + x.n, x.actor, x.action, x.payload_hash,
           x.prev_hash, x.entry_hash, {p[7]}::timestamptz
    FROM {source}, unnest({p[1]}::text[], {p[2]}::text[], {p[3]}::text[], {p[4]}::text[],
                          {p[5]}::text[]) WITH ORDINALITY
         AS x(actor, action, payload_hash, prev_hash, entry_hash, n)"""
    return _audit_ctes(rows, p[5], p[6])


def linked_batch_insert_ctes(source: str, first: int) -> str:
    """`linked_insert_ctes` for entries of several sessions' chains in one statement:
    `source` yields a row (`k`, `tenant_id`, `session_id`) for each step whose fenced write
    matched; its entries (`linked_batch_arguments`, nine parameters from `$first`) are
    written, the others' not. Positions are absolute (each entry carries its chain_seq)."""
    p = [f"${first + i}" for i in range(9)]
    rows = f"""
    SELECT {source}.tenant_id, {source}.session_id, x.chain_seq::bigint, x.actor, x.action,
           x.payload_hash, x.prev_hash, x.entry_hash, {p[8]}::timestamptz
    FROM {source} JOIN unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[],
                              {p[4]}::text[], {p[5]}::text[], {p[6]}::text[])
         AS x(k, chain_seq, actor, action, payload_hash, prev_hash, entry_hash)
      ON x.k::int = {source}.k"""
    return _audit_ctes(rows, p[6], p[7])


def linked_batch_arguments(
    steps: Sequence[tuple[Sequence[AuditRecord], ChainHead]], at: datetime
) -> tuple[list[Any], list[ChainHead]]:
    """The nine parameters of `linked_batch_insert_ctes` for each step's entries (the k-th
    step's chain after its head; k from 1), and each chain's head after them."""
    rows: list[tuple[str, ...]] = []
    heads = []
    for k, (entries, head) in enumerate(steps, start=1):
        linked, after = _linked(entries, head, at)
        step = str(k)
        rows += [(step, str(row[0]), *row[1:]) for row in linked]
        heads.append(after)
    columns = (
        [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(8)]
    )
    return [*columns, at], heads


def linked_arguments(
    entries: Sequence[AuditRecord], head: ChainHead, at: datetime
) -> tuple[list[Any], ChainHead]:
    """The eight parameters of `linked_insert_ctes` for `entries` (all on one session's
    chain) appended after `head` at `at`, and the chain's head after them."""
    linked, after = _linked(entries, head, at)
    columns = (
        [list(column) for column in zip(*linked, strict=True)] if linked else [[] for _ in range(7)]
    )
    return [head.seq, *columns[1:], at], after


def _linked(
    entries: Sequence[AuditRecord], head: ChainHead, at: datetime
) -> tuple[list[tuple[Any, ...]], ChainHead]:
    """Each entry linked after `head` at `at` — (chain_seq, actor, action, payload_hash,
    prev_hash, entry_hash, payload text) — and the chain's head after them."""
    linked = []
    seq, prev = head.seq, head.hash
    for entry in entries:
        text = canonical_json(clean_payload(entry.payload))
        digest = hashlib.sha256(text.encode()).hexdigest()
        seq += 1
        action = entry.action.value
        link = entry_hash(
            tenant_id=entry.tenant_id, session_id=entry.session_id, chain_seq=seq,
            actor=entry.actor, action=action, created_at=at, payload_hash=digest, prev_hash=prev,
        )  # fmt: skip
        linked.append((seq, entry.actor, action, digest, prev, link, text))
        prev = link
    return linked, ChainHead(seq, prev)


def is_chain_conflict(exc: BaseException) -> bool:
    """`exc` is the unique index refusing a stale head's entries (read it again, retry)."""
    return (
        isinstance(exc, asyncpg.UniqueViolationError)
        and getattr(exc, "constraint_name", None) == _CHAIN_CONSTRAINT
    )


@dataclass
class SessionChain:
    """A session's chain as the worker holding its lease knows it (`head` None: unknown,
    read before linking)."""

    tenant_id: str
    session_id: str
    head: ChainHead | None = None

    def holds(self, entries: Sequence[AuditRecord]) -> bool:
        return all(
            e.tenant_id == self.tenant_id and e.session_id == self.session_id for e in entries
        )


# In a transaction of its own: the session's row, then the chain's lock (the order every
# other appender keeps), then the head read with a fresh snapshot: nobody can append to the
# chain until this transaction ends.
_LOCK_AND_READ_HEAD = f"""
SELECT audit_chain_head($1, $2, l.locked) FROM (
    SELECT {CHAIN_LOCK_SQL.format(tenant="$1", session="$2")}::text AS locked
    FROM (SELECT count(*) FROM (SELECT 1 FROM sessions WHERE session_id = $2 FOR UPDATE) r) c
) l
"""


async def write_linked(
    pool: asyncpg.Pool,
    statement: str,
    args: Sequence[Any],
    entries: Sequence[AuditRecord],
    chain: SessionChain,
) -> asyncpg.Record | None:
    """Run `statement` (built with `linked_insert_ctes`, its parameters after `args`) with
    `entries` linked after the chain's head; its row, or None when its fenced write matched
    nothing. The head moves when it matched. With the head known, one statement; if that
    head turns out stale (somebody else appended; the statement wrote nothing), or is not
    known, the statement runs in a transaction that first locks the chain and reads the head
    (then it cannot be stale)."""
    at = datetime.now(UTC)
    if chain.head is not None:
        arguments, head = linked_arguments(entries, chain.head, at)
        try:
            row: asyncpg.Record | None = await pool.fetchrow(statement, *args, *arguments)
        except asyncpg.UniqueViolationError as exc:
            if not is_chain_conflict(exc):
                raise
        else:
            if row is not None:
                chain.head = head
            return row
    chain.head = None
    async with pool.acquire() as conn, conn.transaction():
        current = ChainHead.parse(
            await conn.fetchval(_LOCK_AND_READ_HEAD, chain.tenant_id, chain.session_id)
        )
        arguments, head = linked_arguments(entries, current, at)
        row = await conn.fetchrow(statement, *args, *arguments)
    if row is not None:
        chain.head = head
    return row

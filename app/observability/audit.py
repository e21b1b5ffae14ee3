"""The audit log: append (hash-chained, secrets scrubbed), verify, erase payloads, list.

A chain is a tenant's entries of one session, or the tenant's entries with no session; so
concurrent sessions never wait on each other's appends. Each entry's `entry_hash` covers its
fields, the hash of its payload and the previous entry's hash (docs/audit.md defines both
byte for byte). Appends go through the database function `audit_append()` (migration 0006):
one statement, one round trip per batch, inside the caller's transaction. Verification
recomputes every hash here, in Python, so it does not trust the database's own code.

Every function takes either an asyncpg connection (the runtime's) or an `AsyncSession`
(API code paths); with a session the work joins its transaction.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any, TypeAlias

import asyncpg
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import driver_connection
from app.errors import ValidationFailed
from app.observability.models import AuditEntry, AuditPayload
from app.tenants.scoping import TenantScope

GENESIS_HASH = "0" * 64
REDACTED = "[redacted]"
VERIFY_BATCH_ROWS = 2000

Database: TypeAlias = asyncpg.Connection | AsyncSession


class AuditAction(StrEnum):
    """What an entry records; callers share these names (and docs/audit.md their payloads)."""

    POLICY_DECISION = "policy.decision"
    TOOL_CALL = "tool.call"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_DECIDED = "approval.decided"
    MODEL_CALL = "model.call"
    SESSION_STATUS = "session.status"
    SESSION_ERASED = "session.erased"
    AGENT_CHANGED = "agent.changed"
    AGENT_DISABLED = "agent.disabled"
    INJECTION_FLAGGED = "injection.flagged"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry to append. `session_id` None puts it on the tenant's chain."""

    tenant_id: str
    session_id: str | None
    actor: str
    action: AuditAction
    payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The entry hash writes "no session" as an empty id: keep the two distinct.
        if self.session_id == "":
            raise ValueError("session_id must be None (the tenant's chain) or a session id")


# --- Secrets: scrubbed from every payload before it is hashed or written -------------------

_SECRET_WORDS = frozenset(
    {
        "authorization", "auth", "token", "secret", "password", "passwd", "passphrase",
        "credential", "credentials", "cookie", "cookies", "apikey", "jwt", "bearer",
    }
)  # fmt: skip
_SECRET_WORD_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("access", "key"), ("signing", "key")}
)
_ACRONYM_BOUNDARY = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SECRET_VALUES = [
    (re.compile(r"(?i)\b((?:proxy-)?authorization)\s*([:=])\s*[^\r\n]+"), rf"\1\2 {REDACTED}"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*"), rf"\1 {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    (re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"), REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{16,}"), REDACTED),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), REDACTED),
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@"), rf"\1{REDACTED}@"),
]  # fmt: skip
# Lower-case text that each value pattern needs: most strings contain none, and a substring
# test is far cheaper than a regex scan.
_SECRET_VALUE_HINTS = (
    "authorization", "bearer", "eyj", "sk-", "k_live_", "k_test_", "whsec_", "ghp_", "gho_", "ghu_",
    "ghs_", "ghr_", "github_pat_", "akia", "xox", "private key", "://",
)  # fmt: skip
_SHORTEST_SECRET_VALUE = len("a://b:c@")


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """A key named like a credential (`Authorization`, `api_key`, `X-Api-Key`, `accessToken`,
    `client_secret`, ...). Whole words only: `input_tokens` is not a secret."""
    spaced = _CAMEL_BOUNDARY.sub(r"\1_\2", _ACRONYM_BOUNDARY.sub(r"\1_\2", key)).lower()
    words = [word for word in _NON_ALNUM.split(spaced) if word]
    return any(word in _SECRET_WORDS for word in words) or any(
        pair in _SECRET_WORD_PAIRS for pair in itertools.pairwise(words)
    )


def _clean_text(text: str) -> str:
    if "\x00" in text:  # jsonb refuses NUL
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates: pair what pairs, replace the rest
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if len(text) < _SHORTEST_SECRET_VALUE:
        return text
    lowered = text.lower()
    for hint in _SECRET_VALUE_HINTS:
        if hint in lowered:
            for pattern, replacement in _SECRET_VALUES:
                text = pattern.sub(replacement, text)
            break
    return text


@functools.lru_cache(maxsize=4096)
def _clean_key(key: str) -> tuple[str, bool]:
    """A mapping key as stored, and whether it names a credential (keys are few)."""
    return _clean_text(key), is_secret_key(key)


def clean_payload(value: Any) -> Any:
    """`value` as the audit log stores it: plain JSON whose hash survives a round trip
    through jsonb (integral floats become ints; non-finite floats, dates and other objects
    become text), with credentials replaced by "[redacted]" (by key name and by value)."""
    kind = type(value)  # the common exact types first; subclasses take the general path
    if kind is str:
        return _clean_text(value)
    if kind is dict:
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            text, secret = _clean_key(key if type(key) is str else str(key))
            cleaned[text] = REDACTED if secret else clean_payload(item)
        return cleaned
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, Enum):
        return clean_payload(value.value)
    if isinstance(value, Decimal):
        return clean_payload(float(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {
            _clean_text(str(key)): REDACTED if is_secret_key(str(key)) else clean_payload(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [clean_payload(item) for item in value]
    return _clean_text(str(value))


# --- Hashes (docs/audit.md; migration 0006 `audit_entry_hash` is the SQL twin) --------------


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text unescaped: one text per JSON value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def payload_hash(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@functools.lru_cache(maxsize=256)
def _utc_text(at: datetime) -> str:
    """`at` as the hash covers it (the entries of a batch share one instant)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(
    *,
    tenant_id: str,
    session_id: str | None,
    chain_seq: int,
    actor: str,
    action: str,
    created_at: datetime,
    payload_hash: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the netstrings (`<byte length>:<bytes>,`) of the entry's fields."""
    fields = (
        "audit/v1", tenant_id, session_id or "", str(chain_seq), actor, action,
        _utc_text(created_at), payload_hash, prev_hash,
    )  # fmt: skip
    netstrings = "".join([f"{len(f) if f.isascii() else len(f.encode())}:{f}," for f in fields])
    return hashlib.sha256(netstrings.encode()).hexdigest()


# --- Append ----------------------------------------------------------------------------------

# One statement: embed it in a larger one (e.g. `SELECT ..., audit_append(...) FROM s`) to
# append with no round trip of its own; the function's own statements lock and read afresh.
APPEND_SQL = (
    "SELECT audit_append($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])"
)


async def _driver(db: Database) -> asyncpg.Connection:
    if isinstance(db, AsyncSession):
        return await driver_connection(db)
    return db


def append_arguments(entries: Sequence[AuditRecord]) -> list[list[str | None]]:
    """The six array parameters of `audit_append()` for `entries`: payloads cleaned,
    canonicalised and hashed here."""
    payloads = [canonical_json(clean_payload(entry.payload)) for entry in entries]
    return [
        [entry.tenant_id for entry in entries],
        [entry.session_id for entry in entries],
        [entry.actor for entry in entries],
        [entry.action.value for entry in entries],
        [hashlib.sha256(text.encode()).hexdigest() for text in payloads],
        list(payloads),
    ]


async def append(db: Database, entries: Sequence[AuditRecord]) -> list[int]:
    """Append `entries` (in order) in the caller's transaction, in one round trip; their
    `audit_id`s. The chains they touch stay locked until that transaction ends, so append
    after the writes the entries describe, and use one call for several chains."""
    if not entries:
        return []
    conn = await _driver(db)
    ids: list[int] = await conn.fetchval(APPEND_SQL, *append_arguments(entries))
    return ids


# --- Erase -----------------------------------------------------------------------------------

_ERASE_PAYLOADS = """
DELETE FROM audit_payloads p USING audit_log a
WHERE a.audit_id = p.audit_id AND a.tenant_id = $1 AND a.session_id = $2 AND a.action <> $3
"""


async def erase_session_payloads(
    db: Database, *, tenant_id: str, session_id: str, actor: str
) -> int:
    """Delete the payloads of the session's entries (its chain stays verifiable) and append a
    `session.erased` entry that accounts for them; how many payloads were deleted."""
    conn = await _driver(db)
    status = await conn.execute(_ERASE_PAYLOADS, tenant_id, session_id, AuditAction.SESSION_ERASED)
    erased = int(status.rsplit(" ", 1)[-1])
    marker = {"payloads_erased": erased}
    await append(
        conn, [AuditRecord(tenant_id, session_id, actor, AuditAction.SESSION_ERASED, marker)]
    )
    return erased


# --- Verify ----------------------------------------------------------------------------------


class VerifyResult(BaseModel):
    ok: bool
    checked: int
    first_bad_id: int | None


_COLUMNS = """
SELECT a.audit_id, a.session_id, a.chain_seq, a.actor, a.action, a.created_at,
       a.payload_hash, a.prev_hash, a.entry_hash, p.payload::text AS payload
FROM audit_log a LEFT JOIN audit_payloads p ON p.audit_id = a.audit_id
"""
_SESSION_CHAINS_AFTER = (
    _COLUMNS + "WHERE a.tenant_id = $1 AND a.session_id IS NOT NULL"
    " AND (a.session_id, a.chain_seq) > ($2, $3) ORDER BY a.session_id, a.chain_seq LIMIT $4"
)
_TENANT_CHAIN_AFTER = (
    _COLUMNS + "WHERE a.tenant_id = $1 AND a.session_id IS NULL AND a.chain_seq > $2"
    " ORDER BY a.chain_seq LIMIT $3"
)


async def _rows_chain_by_chain(
    conn: asyncpg.Connection, tenant_id: str
) -> AsyncIterator[asyncpg.Record]:
    """Every entry of the tenant, each chain's in `chain_seq` order: one query per batch."""
    after: tuple[str, int] = ("", 0)
    while True:
        rows = await conn.fetch(_SESSION_CHAINS_AFTER, tenant_id, *after, VERIFY_BATCH_ROWS)
        for row in rows:
            yield row
        if len(rows) < VERIFY_BATCH_ROWS:
            break
        after = (rows[-1]["session_id"], rows[-1]["chain_seq"])
    after_seq = 0
    while True:
        rows = await conn.fetch(_TENANT_CHAIN_AFTER, tenant_id, after_seq, VERIFY_BATCH_ROWS)
        for row in rows:
            yield row
        if len(rows) < VERIFY_BATCH_ROWS:
            break
        after_seq = rows[-1]["chain_seq"]


@dataclass
class _ChainCheck:
    """One chain, walked in order: the first entry that does not link or hash right, and
    the first whose payload is gone without a later `session.erased` entry to say why."""

    tenant_id: str
    session_id: str | None
    next_seq: int = 1
    prev_hash: str = GENESIS_HASH
    first_broken_id: int | None = None
    unexplained_missing_id: int | None = None

    def check(self, row: asyncpg.Record) -> None:
        payload = row["payload"]
        sound = (
            row["chain_seq"] == self.next_seq
            and row["prev_hash"] == self.prev_hash
            and (payload is None or payload_hash(json.loads(payload)) == row["payload_hash"])
            and row["entry_hash"]
            == entry_hash(
                tenant_id=self.tenant_id,
                session_id=row["session_id"],
                chain_seq=row["chain_seq"],
                actor=row["actor"],
                action=row["action"],
                created_at=row["created_at"],
                payload_hash=row["payload_hash"],
                prev_hash=row["prev_hash"],
            )
        )
        if not sound and self.first_broken_id is None:
            self.first_broken_id = row["audit_id"]
        if payload is None:
            if self.unexplained_missing_id is None:
                self.unexplained_missing_id = row["audit_id"]
        elif row["action"] == AuditAction.SESSION_ERASED:
            self.unexplained_missing_id = None
        self.next_seq = row["chain_seq"] + 1
        self.prev_hash = row["entry_hash"]

    def first_bad_id(self) -> int | None:
        found = [i for i in (self.first_broken_id, self.unexplained_missing_id) if i is not None]
        return min(found, default=None)


async def verify(db: Database, tenant_id: str) -> VerifyResult:
    """Walk every chain of the tenant; `first_bad_id` is the lowest `audit_id` whose hash does
    not recompute, whose `prev_hash` does not link to its predecessor (or whose chain
    position skips one), or whose payload was changed or deleted other than by erasure."""
    conn = await _driver(db)
    checked = 0
    bad: list[int] = []
    chain: _ChainCheck | None = None
    async for row in _rows_chain_by_chain(conn, tenant_id):
        if chain is None or chain.session_id != row["session_id"]:
            if chain is not None and (bad_id := chain.first_bad_id()) is not None:
                bad.append(bad_id)
            chain = _ChainCheck(tenant_id, row["session_id"])
        chain.check(row)
        checked += 1
    if chain is not None and (bad_id := chain.first_bad_id()) is not None:
        bad.append(bad_id)
    first_bad_id = min(bad, default=None)
    return VerifyResult(ok=first_bad_id is None, checked=checked, first_bad_id=first_bad_id)


# --- List (GET /v1/audit) ----------------------------------------------------------------------


class AuditEntryView(BaseModel):
    id: int
    tenant: str
    session_id: str | None
    chain_seq: int
    actor: str
    action: str
    payload: dict[str, Any] | None
    payload_hash: str
    prev_hash: str
    entry_hash: str
    created_at: datetime


class AuditList(BaseModel):
    items: list[AuditEntryView]
    next_cursor: str | None


def _decode_cursor(cursor: str) -> int:
    """The `audit_id` a cursor holds (a bigint); 422 for anything else."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 19):
        raise ValidationFailed("invalid cursor")
    audit_id = int(cursor)
    if not 1 <= audit_id < 2**63:
        raise ValidationFailed("invalid cursor")
    return audit_id


async def list_entries(
    scope: TenantScope,
    *,
    session_id: str | None,
    action: AuditAction | None,
    since: datetime | None,
    cursor: str | None,
    limit: int,
) -> AuditList:
    """The tenant's entries, newest first (by `audit_id`), with their payloads (None once
    erased); `next_cursor` continues after the last one."""
    statement = (
        scope.select(AuditEntry)
        .add_columns(AuditPayload.payload)
        .outerjoin(AuditPayload, AuditPayload.audit_id == AuditEntry.audit_id)
        .order_by(AuditEntry.audit_id.desc())
        .limit(limit + 1)
    )
    if session_id is not None:
        statement = statement.where(AuditEntry.session_id == session_id)
    if action is not None:
        statement = statement.where(AuditEntry.action == action.value)
    if since is not None:
        statement = statement.where(AuditEntry.created_at >= since)
    if cursor is not None:
        statement = statement.where(AuditEntry.audit_id < _decode_cursor(cursor))
    rows = (await scope.db.execute(statement)).all()
    items = [
        AuditEntryView(
            id=entry.audit_id,
            tenant=entry.tenant_id,
            session_id=entry.session_id,
            chain_seq=entry.chain_seq,
            actor=entry.actor,
            action=entry.action,
            payload=payload,
            payload_hash=entry.payload_hash,
            prev_hash=entry.prev_hash,
            entry_hash=entry.entry_hash,
            created_at=entry.created_at,
        )
        for entry, payload in rows[:limit]
    ]
    next_cursor = str(items[-1].id) if len(rows) > limit else None
    return AuditList(items=items, next_cursor=next_cursor)

"""`Idempotency-Key` for create requests: the same key and body returns the original
response; the same key with a different body is a 409.

The key row is inserted *before* the resource, in the same transaction. A concurrent
duplicate's insert waits on the unique index until the first transaction ends: if that
committed, the duplicate returns its stored response (one resource, never two); if it
rolled back, the duplicate proceeds as the first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.models import IdempotencyKey
from app.errors import Conflict, ValidationFailed

MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(Conflict):
    code = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: dict[str, Any]


def request_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim_key(
    db: AsyncSession, tenant_id: str, scope: str, key: str, body: Any
) -> StoredResponse | None:
    """None if this request owns the key (go on, then `store`); else the stored response."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationFailed(f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable characters")
    digest = request_hash(body)
    inserted = await db.execute(
        insert(IdempotencyKey)
        .values(
            tenant_id=tenant_id,
            scope=scope,
            key=key,
            request_hash=digest,
            response_status=0,
            response_body={},
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )
    if inserted.first() is not None:
        return None
    row = (
        await db.execute(
            select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id,
                IdempotencyKey.scope == scope,
                IdempotencyKey.key == key,
            )
        )
    ).scalar_one()
    if row.request_hash != digest:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body; use a new key"
        )
    return StoredResponse(row.response_status, row.response_body)


async def store(
    db: AsyncSession,
    tenant_id: str,
    scope: str,
    key: str,
    status_code: int,
    body: dict[str, Any],
    resource_id: str,
) -> None:
    await db.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
        )
        .values(response_status=status_code, response_body=body, resource_id=resource_id)
    )

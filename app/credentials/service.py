"""Storing, rotating, revoking and resolving tool credentials.

A credential belongs to (tenant, agent, tool). It is encrypted with
`CREDENTIALS_ENCRYPTION_KEY` (Fernet) before it reaches the database, never returned by the
API (views carry the tool, version and time only), never written to events, the ledger, the
audit log or logs, and read by the runtime at call time — so a rotation takes effect at the
agent's next call and a revocation stops it, without a restart and without touching any
other agent's credential for the same tool.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.credentials.models import ToolCredential
from app.observability import audit
from app.observability.audit import AuditAction, AuditRecord

_UPSERT = text(
    """
    INSERT INTO tool_credentials (tenant_id, agent_name, tool, ciphertext, version, updated_by)
    VALUES (:tenant, :agent, :tool, :ciphertext, 1, :actor)
    ON CONFLICT (tenant_id, agent_name, tool) DO UPDATE
    SET ciphertext = EXCLUDED.ciphertext, version = tool_credentials.version + 1,
        updated_by = EXCLUDED.updated_by, updated_at = now()
    RETURNING version
    """
)
_RESOLVE = """
SELECT ciphertext FROM tool_credentials WHERE tenant_id = $1 AND agent_name = $2 AND tool = $3
"""


class CredentialView(BaseModel):
    agent: str
    tool: str
    version: int
    updated_by: str | None
    updated_at: datetime


class CredentialUnreadable(Exception):
    """The stored ciphertext does not decrypt with the configured key (key rotated away)."""


class CredentialCipher:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken as exc:
            raise CredentialUnreadable(
                "a stored credential does not decrypt with CREDENTIALS_ENCRYPTION_KEY"
            ) from exc


async def put(
    db: AsyncSession,
    cipher: CredentialCipher,
    *,
    tenant_id: str,
    agent: str,
    tool: str,
    secret: str,
    actor: str,
) -> int:
    """Store or rotate; returns the credential's new version. Audited (without the value)."""
    version = int(
        (
            await db.execute(
                _UPSERT,
                {
                    "tenant": tenant_id,
                    "agent": agent,
                    "tool": tool,
                    "ciphertext": cipher.seal(secret),
                    "actor": actor,
                },
            )
        ).scalar_one()
    )
    await audit.append(
        db,
        [
            AuditRecord(
                tenant_id,
                None,
                actor,
                AuditAction.AGENT_CHANGED,
                {
                    "agent": agent,
                    "credential": tool,
                    "op": "rotated" if version > 1 else "stored",
                    "version": version,
                },
            )
        ],
    )
    return version


async def revoke(db: AsyncSession, *, tenant_id: str, agent: str, tool: str, actor: str) -> bool:
    result = await db.execute(
        delete(ToolCredential)
        .where(
            ToolCredential.tenant_id == tenant_id,
            ToolCredential.agent_name == agent,
            ToolCredential.tool == tool,
        )
        .returning(ToolCredential.version)
    )
    revoked = result.scalar_one_or_none() is not None
    if revoked:
        await audit.append(
            db,
            [
                AuditRecord(
                    tenant_id,
                    None,
                    actor,
                    AuditAction.AGENT_CHANGED,
                    {"agent": agent, "credential": tool, "op": "revoked"},
                )
            ],
        )
    return revoked


async def list_for_agent(db: AsyncSession, *, tenant_id: str, agent: str) -> list[CredentialView]:
    rows = await db.execute(
        select(ToolCredential)
        .where(ToolCredential.tenant_id == tenant_id, ToolCredential.agent_name == agent)
        .order_by(ToolCredential.tool)
    )
    return [
        CredentialView(
            agent=row.agent_name,
            tool=row.tool,
            version=row.version,
            updated_by=row.updated_by,
            updated_at=row.updated_at,
        )
        for row in rows.scalars()
    ]


async def resolve(
    conn: asyncpg.Connection | asyncpg.Pool,
    cipher: CredentialCipher,
    *,
    tenant_id: str,
    agent: str,
    tool: str,
) -> str | None:
    """The agent's credential for `tool` right now (None: none stored or revoked)."""
    ciphertext = await conn.fetchval(_RESOLVE, tenant_id, agent, tool)
    return None if ciphertext is None else cipher.open(ciphertext)

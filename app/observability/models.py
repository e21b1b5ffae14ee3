from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at_column


class AuditEntry(Base):
    """One audited action. Append-only (a database trigger refuses UPDATE, DELETE and
    TRUNCATE) and hash-chained: a chain is a tenant's entries of one session (or of no
    session), numbered by `chain_seq`; `entry_hash` covers `prev_hash` and `payload_hash`,
    so the payload itself (in `audit_payloads`) can be erased without breaking the chain.
    Rows are written only by the `audit_append()` database function (app.observability.audit)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_tenant_id_audit_id", "tenant_id", "audit_id"),
        # One row per chain position (no fork can be committed); the chain head lookup,
        # the verification walk and the session filter all read this index.
        Index(
            "uq_audit_log_tenant_id_session_id_chain_seq", "tenant_id", "session_id", "chain_seq",
            unique=True, postgresql_nulls_not_distinct=True,
        ),
    )  # fmt: skip

    audit_id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128), nullable=False)
    session_id: Mapped[str | None] = mapped_column(String(40))
    chain_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    payload_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    entry_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = created_at_column()


class AuditPayload(Base):
    """The data an audit entry describes, kept beside the chain so it can be erased (DELETE
    is allowed; a trigger refuses UPDATE and TRUNCATE)."""

    __tablename__ = "audit_payloads"

    audit_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("audit_log.audit_id"), primary_key=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(nullable=False)

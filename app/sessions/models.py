from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at_column
from app.sessions.events import stored_event_types

SESSION_STATUSES = (
    "queued",
    "running",
    "awaiting_approval",
    "awaiting_input",
    "completed",
    "failed",
    "cancelled",
    "timed_out",
)


class Session(Base):
    """One agent (or workflow) run. The sessions table is the work queue: workers claim
    `queued` rows with SKIP LOCKED and own them through the lease columns."""

    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in SESSION_STATUSES) + ")",
            name="status_valid",
        ),
        # The claim query walks this index: each tenant's queued sessions by priority, then age.
        Index(
            "ix_sessions_claimable",
            "tenant_id",
            text("priority DESC"),
            "run_after",
            "created_at",
            postgresql_where=text("status = 'queued'"),
        ),
        Index(
            "ix_sessions_lease_expiry",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_sessions_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_sessions_parent_id", "parent_id", postgresql_where=text("parent_id IS NOT NULL")),
    )

    session_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tenants.tenant_id", ondelete="CASCADE"), nullable=False
    )
    agent_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("agents.agent_id"))
    agent_name: Mapped[str | None] = mapped_column(String(128))
    agent_version: Mapped[int | None] = mapped_column(Integer)
    workflow_name: Mapped[str | None] = mapped_column(String(128))
    parent_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("sessions.session_id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(32), nullable=False, server_default="queued")
    priority: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    input: Mapped[Any] = mapped_column(JSONB, nullable=True)
    session_metadata: Mapped[dict[str, Any]] = mapped_column(
        "metadata", nullable=False, server_default=text("'{}'::jsonb")
    )
    result: Mapped[Any] = mapped_column(JSONB, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column()
    turns: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # New user input sent with `if_busy: queue` while a run was in progress; the run's end
    # turns it into the next run instead of finishing the session.
    pending_inputs: Mapped[list[Any]] = mapped_column(
        nullable=False, server_default=text("'[]'::jsonb")
    )
    # The last `seq` given to an event of this session; bumped by the fenced write that
    # appends the event, so numbering and fencing are one atomic statement.
    event_seq: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    subject: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    # Lease: who runs it, until when, and a fencing epoch bumped on every claim.
    worker_id: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    lease_epoch: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    run_after: Mapped[datetime] = mapped_column(server_default=func.now(), nullable=False)
    deadline_at: Mapped[datetime | None] = mapped_column()
    cancel_requested_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column()


class SessionEvent(Base):
    """An append-only record of something that happened in a session. `seq` numbers a
    session's events without gaps in commit order (the session row's lock assigns it), so
    it is the event's id in the API and the SSE stream (migration 0015)."""

    __tablename__ = "session_events"

    session_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(
        Enum(*stored_event_types(), name="session_event_type"), nullable=False
    )
    # `json`, not `jsonb`: written once, read whole, never searched inside (migration 0014)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = created_at_column()

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at_column


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    MODIFIED = "modified"
    EXPIRED = "expired"


APPROVAL_STATUSES = tuple(status.value for status in ApprovalStatus)


class Approval(Base):
    """A request for a human decision on one proposed tool call.

    `status` leaves `pending` exactly once, by one conditional UPDATE (a reviewer's
    deciding vote, or the expiry sweep). `decisions` holds every reviewer's vote (N-of-M
    quorum); `approved_arguments` what may run once approved, modified, or expired under
    `on_timeout = 'approve'`.
    """

    __tablename__ = "approvals"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in APPROVAL_STATUSES) + ")",
            name="status_valid",
        ),
        CheckConstraint("on_timeout IN ('approve', 'reject')", name="on_timeout_valid"),
        CheckConstraint("reviewers_required >= 1", name="reviewers_required_positive"),
        # One request per proposed call: the runtime finds the decision by tool_use_id, and
        # a replayed request returns the existing row instead of asking twice.
        UniqueConstraint("session_id", "tool_use_id"),
        Index("ix_approvals_tenant_id_status_created_at", "tenant_id", "status", "created_at"),
        Index(
            "ix_approvals_pending_expiry", "expires_at", postgresql_where=text("status = 'pending'")
        ),
    )

    approval_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tenants.tenant_id", ondelete="CASCADE"), nullable=False
    )
    session_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("sessions.session_id", ondelete="CASCADE"), nullable=False
    )
    # Who started the session (the runtime passes the root session's creator for a child
    # session); they may not decide their own session's request.
    session_created_by: Mapped[str | None] = mapped_column(Text)
    tool_use_id: Mapped[str] = mapped_column(String(128), nullable=False)
    tool: Mapped[str] = mapped_column(String(128), nullable=False)
    arguments: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    arguments_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    gate: Mapped[str] = mapped_column(String(32), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    agent_reasoning: Mapped[str | None] = mapped_column(Text)
    context: Mapped[dict[str, Any] | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(32), nullable=False, server_default="pending")
    reviewers_required: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    decisions: Mapped[list[Any]] = mapped_column(nullable=False, server_default=text("'[]'::jsonb"))
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column()
    comment: Mapped[str | None] = mapped_column(Text)
    approved_arguments: Mapped[dict[str, Any] | None] = mapped_column()
    on_timeout: Mapped[str] = mapped_column(String(16), nullable=False, server_default="reject")
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime] = mapped_column(nullable=False)

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at_column

TOOL_CALL_STATUSES = (
    "started",
    "succeeded",
    "failed",
    "unknown",
    "denied",
    "awaiting_approval",
    "cancelled",
)


class ToolDefinition(Base):
    """An HTTP tool a tenant registered. Built-in tools live in code, not here."""

    __tablename__ = "tool_definitions"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    tool_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tenants.tenant_id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    definition: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    secret_ref: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), nullable=False)


class ToolCall(Base):
    """The durable ledger entry of one tool call: recorded `started` before it runs and
    finished after, so a crash never hides what ran and what did not."""

    __tablename__ = "tool_calls"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in TOOL_CALL_STATUSES) + ")",
            name="status_valid",
        ),
    )

    # Keyed by the session and the model's tool_use id (unique within a session).
    session_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True
    )
    tool_use_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    turn: Mapped[int] = mapped_column(Integer, nullable=False)
    tool: Mapped[str] = mapped_column(String(128), nullable=False)
    # `json`, like event payloads: written whole, read whole (migration 0014)
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    idempotent: Mapped[bool] = mapped_column(Boolean, nullable=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = created_at_column()
    finished_at: Mapped[datetime | None] = mapped_column()

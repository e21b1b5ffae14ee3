from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at_column


class Agent(Base):
    """An agent's identity and its current version. `tenant_id` NULL = platform-wide (YAML)."""

    __tablename__ = "agents"
    __table_args__ = (
        Index(
            "uq_agents_tenant_id_name", "tenant_id", "name",
            unique=True, postgresql_nulls_not_distinct=True,
        ),
    )  # fmt: skip

    agent_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("tenants.tenant_id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    latest_version: Mapped[int] = mapped_column(Integer, nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), nullable=False)


class AgentVersion(Base):
    """One immutable version of an agent's definition. Never updated after insert."""

    __tablename__ = "agent_versions"

    agent_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("agents.agent_id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at_column

# Fixed by the schema: changing it needs a migration (and re-embedding).
EMBEDDING_DIMENSIONS = 384
MEMORY_TYPES = ("semantic", "procedural", "episodic")


class Memory(Base):
    __tablename__ = "memories"
    __table_args__ = (
        CheckConstraint(
            "type IN (" + ", ".join(f"'{t}'" for t in MEMORY_TYPES) + ")", name="type_valid"
        ),
        Index(
            "uq_memories_tenant_id_agent_name_content_hash",
            "tenant_id", "agent_name", "content_hash",
            unique=True, postgresql_nulls_not_distinct=True,
        ),
        Index(
            "ix_memories_embedding_hnsw", "embedding",
            postgresql_using="hnsw", postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )  # fmt: skip

    memory_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tenants.tenant_id", ondelete="CASCADE"), nullable=False
    )
    agent_name: Mapped[str | None] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("sessions.session_id", ondelete="CASCADE")
    )
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    memory_metadata: Mapped[dict[str, Any]] = mapped_column(
        "metadata", nullable=False, server_default=text("'{}'::jsonb")
    )
    embedding: Mapped[list[float]] = mapped_column(Vector(EMBEDDING_DIMENSIONS), nullable=False)
    created_at: Mapped[datetime] = created_at_column()

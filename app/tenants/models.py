from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at_column


class Tenant(Base):
    """A customer of the platform, known by the JWT `tenant` claim; created on first use."""

    __tablename__ = "tenants"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    max_running_sessions: Mapped[int] = mapped_column(Integer, nullable=False)
    # Sessions of this tenant ever claimed (moved to `running`); running = this - the
    # released count (`TenantReleasedSessions`). Changed only with a session's status, in
    # the same statement (app.sessions.transitions), so it cannot drift.
    claimed_sessions: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    rate_limit: Mapped[str | None] = mapped_column(String(64))
    # Retention of finished sessions; NULL → the defaults in settings (RETENTION_*).
    retention_days: Mapped[float | None] = mapped_column(Float)
    retention_keep_last: Mapped[int | None] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()


class TenantReleasedSessions(Base):
    """How many of a tenant's sessions left `running`, in stripes (a session counts on the
    stripe of its id's hash), so sessions finishing at once do not queue on one row lock."""

    __tablename__ = "tenant_released_sessions"

    tenant_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tenants.tenant_id", ondelete="CASCADE"), primary_key=True
    )
    stripe: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    released: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")

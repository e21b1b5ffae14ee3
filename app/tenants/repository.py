from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.tenants.models import Tenant, TenantReleasedSessions


async def insert_if_missing(db: AsyncSession, tenant_id: str, max_running_sessions: int) -> None:
    statement = (
        insert(Tenant)
        .values(tenant_id=tenant_id, max_running_sessions=max_running_sessions)
        .on_conflict_do_nothing(index_elements=[Tenant.tenant_id])
    )
    await db.execute(statement)


async def get(db: AsyncSession, tenant_id: str) -> Tenant | None:
    return (
        await db.execute(select(Tenant).where(Tenant.tenant_id == tenant_id))
    ).scalar_one_or_none()


async def running_sessions(db: AsyncSession, tenant_id: str) -> int:
    """The tenant's sessions in `running`: claimed - released (migration 0012)."""
    released = (
        select(func.coalesce(func.sum(TenantReleasedSessions.released), 0))
        .where(TenantReleasedSessions.tenant_id == tenant_id)
        .scalar_subquery()
    )
    statement = select(Tenant.claimed_sessions - released).where(Tenant.tenant_id == tenant_id)
    return int((await db.execute(statement)).scalar_one())

"""Tenants are created on first use, with default limits from settings."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.settings import TenantDefaults
from app.tenants import repository


class TenantRegistry:
    """Creates a tenant the first time it is seen. Remembers the tenants this process has
    already ensured, so a request costs no write once its tenant exists."""

    def __init__(self, defaults: TenantDefaults) -> None:
        self.defaults = defaults
        self._known: set[str] = set()

    def knows(self, tenant_id: str) -> bool:
        """True once a transaction that ensured `tenant_id` has committed in this process."""
        return tenant_id in self._known

    async def ensure(self, db: AsyncSession, tenant_id: str) -> None:
        """Make sure the tenant row exists, inside the caller's transaction."""
        if tenant_id in self._known:
            return
        await repository.insert_if_missing(db, tenant_id, self.defaults.max_running_sessions)

    def remember(self, tenant_id: str) -> None:
        """Called once the transaction that ensured `tenant_id` has committed."""
        self._known.add(tenant_id)

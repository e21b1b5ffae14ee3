"""Tenant scoping: the one mechanism every repository query of tenant-owned data goes
through. A row of another tenant is indistinguishable from a missing row (→ 404)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import NotFound


class TenantOwned(Protocol):
    tenant_id: Any


ModelT = TypeVar("ModelT", bound=TenantOwned)


class TenantScope:
    """A database session bound to one tenant. Repositories take one of these, never a bare
    session, for tenant-owned tables."""

    def __init__(self, db: AsyncSession | Callable[[], AsyncSession], tenant_id: str) -> None:
        self._db = db  # or what makes it, on first use (a request that never queries)
        self.tenant_id = tenant_id

    @property
    def db(self) -> AsyncSession:
        if not isinstance(self._db, AsyncSession):
            self._db = self._db()
        return self._db

    def select(self, model: type[ModelT]) -> Select[ModelT]:
        """`SELECT model WHERE tenant_id = <this tenant>`; extend it with more filters."""
        return select(model).where(model.tenant_id == self.tenant_id)

    async def get(
        self, model: type[ModelT], key_column: InstrumentedAttribute[Any], key: object, *, what: str
    ) -> ModelT:
        """The row with `key_column == key` in this tenant, or NotFound naming `what`."""
        row = (
            await self.db.execute(self.select(model).where(key_column == key))
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"{what} {key!s} not found")
        return row

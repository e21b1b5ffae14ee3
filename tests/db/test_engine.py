"""`driver_connection`: raw asyncpg statements join the request's SQLAlchemy transaction."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from app.api.context import AppContext
from app.db.engine import driver_connection


async def _tenant_exists(context: AppContext, tenant_id: str) -> bool:
    async with context.session_factory() as db:
        found = await db.execute(
            text("SELECT 1 FROM tenants WHERE tenant_id = :t"), {"t": tenant_id}
        )
        return found.first() is not None


async def test_a_raw_statement_first_in_the_session_rolls_back_with_it(
    context: AppContext,
) -> None:
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    async with context.session_factory() as db:
        conn = await driver_connection(db)
        assert conn.is_in_transaction()
        await conn.execute(
            "INSERT INTO tenants (tenant_id, max_running_sessions) VALUES ($1, 1)", tenant_id
        )
        # the ORM sees it: one transaction
        seen = await db.execute(
            text("SELECT 1 FROM tenants WHERE tenant_id = :t"), {"t": tenant_id}
        )
        assert seen.first() is not None
        await db.rollback()
    assert not await _tenant_exists(context, tenant_id)


async def test_a_raw_statement_first_in_the_session_commits_with_it(
    context: AppContext,
) -> None:
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    async with context.session_factory() as db:
        conn = await driver_connection(db)
        await conn.execute(
            "INSERT INTO tenants (tenant_id, max_running_sessions) VALUES ($1, 1)", tenant_id
        )
        await db.commit()
    assert await _tenant_exists(context, tenant_id)

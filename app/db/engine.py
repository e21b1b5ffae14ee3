"""Async engine and session factory. One engine per process, built from settings."""

from __future__ import annotations

import asyncpg
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings, url: str) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_pre_ping=False,
        connect_args={
            "server_settings": {
                "statement_timeout": str(settings.statement_timeout_ms),
                "application_name": "agent-platform",
            },
            "command_timeout": settings.statement_timeout_ms / 1000 + 5,
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def driver_connection(db: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under `db`'s current transaction, for statements written for
    asyncpg (app.sessions.transitions) that must commit or roll back with the request."""
    connection = await db.connection()
    raw = await connection.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    if not driver.is_in_transaction():
        # The SQLAlchemy adapter sends BEGIN lazily, with its first statement: without this,
        # raw statements issued first would run in autocommit (locks released at once, no
        # rollback with the request). Start it as that first statement would — SQLAlchemy
        # 2.x's adapter method, private, so guarded — rather than by sending a `SELECT 1`
        # (a round trip: ~15 % of the CPU of a session create).
        adapter = raw.dbapi_connection
        start = getattr(adapter, "_start_transaction", None)
        if start is not None and getattr(adapter, "_transaction", False) is None:
            await start()
        if not driver.is_in_transaction():
            await connection.exec_driver_sql("SELECT 1")
    return driver

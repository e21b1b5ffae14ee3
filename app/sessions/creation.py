"""New sessions of concurrent requests inserted by one statement (group commit for creates).

Under load the API process starts dozens of sessions at once, each otherwise a transaction
of its own (BEGIN, the insert, COMMIT: three round trips and a WAL flush each, and the
commit of a NOTIFY holds PostgreSQL's notification-queue lock). `SessionCreator` inserts
the sessions that wait together with one autocommitted statement (`transitions.insert_queued`
takes a set): one round trip, one commit, each session's row, event, audit entry and
wake-up as before. A request whose own transaction has begun (a new tenant's row, an
Idempotency-Key) inserts in that transaction instead (`service.create`), so it commits or
rolls back with the rest of the request.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.batching import StatementBatcher
from app.sessions import transitions
from app.sessions.transitions import NewSession


class SessionCreator(StatementBatcher[NewSession, asyncpg.Record | None]):
    """Each session's row (None: its agent is missing or disabled, nothing written)."""

    def __init__(self, engine: AsyncEngine, max_batch: int = 64) -> None:
        super().__init__("session_create", max_batch)
        self.engine = engine

    async def write_batch(self, items: Sequence[NewSession]) -> list[asyncpg.Record | None]:
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection
            # no transaction begun: the one statement commits on its own
            return await transitions.insert_queued(driver, list(items))

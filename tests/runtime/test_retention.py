"""Retention erases finished sessions by age and by count, per tenant, and never touches
a session that is not finished."""

from __future__ import annotations

from sqlalchemy import text

from app.api.context import AppContext
from app.runtime.store import create_pool
from app.sessions import retention
from app.settings import RetentionSettings
from tests.runtime_fixtures import Api, PoolFactory, script


async def _ids(context: AppContext, tenant: str) -> dict[str, str]:
    async with context.session_factory() as db:
        rows = await db.execute(
            text("SELECT session_id, status FROM sessions WHERE tenant_id = :t"), {"t": tenant}
        )
        return {row[0]: row[1] for row in rows}


async def test_keep_last_and_ttl_erase_only_finished_sessions(
    api: Api, start_pool: PoolFactory, context: AppContext
) -> None:
    await api.create_agent(name="quick", **script({"text": "done"}))
    await start_pool()
    finished = []
    for i in range(4):
        finished.append((await api.start("quick", f"s{i}"))["id"])
        await api.wait(finished[-1])
    async with context.session_factory.begin() as db:
        await db.execute(
            text("UPDATE tenants SET retention_keep_last = 2 WHERE tenant_id = :t"),
            {"t": api.tenant},
        )
    await api.create_agent(name="idle", **script({"text": "x"}))
    db_pool = await create_pool(context.database_url, max_size=2)
    try:
        # A session nobody runs stays queued: retention must not touch it.
        async with context.session_factory.begin() as db:
            await db.execute(
                text("UPDATE tenants SET max_running_sessions = 0 WHERE tenant_id = :t"),
                {"t": api.tenant},
            )
        waiting = (await api.start("idle", "stays queued"))["id"]
        erased = await retention.purge_once(db_pool, RetentionSettings())
        assert erased == 2
        remaining = await _ids(context, api.tenant)
        assert set(remaining) == {
            finished[2],
            finished[3],
            waiting,
        }  # the newest two + the queued one

        async with context.session_factory.begin() as db:
            await db.execute(
                text(
                    "UPDATE tenants SET retention_keep_last = NULL, retention_days = 1 WHERE tenant_id = :t"
                ),
                {"t": api.tenant},
            )
            await db.execute(
                text(
                    "UPDATE sessions SET finished_at = now() - interval '2 days' WHERE session_id = :s"
                ),
                {"s": finished[2]},
            )
        assert await retention.purge_once(db_pool, RetentionSettings()) == 1
        assert set(await _ids(context, api.tenant)) == {finished[3], waiting}
        async with context.session_factory() as db:
            events = (
                await db.execute(
                    text("SELECT count(*) FROM session_events WHERE session_id = :s"),
                    {"s": finished[2]},
                )
            ).scalar_one()
        assert events == 0  # erased with its events
    finally:
        await db_pool.close()

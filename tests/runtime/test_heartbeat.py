"""The heartbeat extends a worker's leases without making sessions wait behind it: a row a
step is writing is passed by and come back for, while the rows already extended are free."""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg

from app.api.context import AppContext
from app.runtime.store import RuntimeStore, create_pool
from tests.runtime_fixtures import Api, script

WORKER = "w-heartbeat-test"


async def _run_by_us(conn: asyncpg.Connection, session_ids: list[str]) -> dict[str, int]:
    """Mark the sessions running under WORKER (as a claim would); their epochs."""
    rows = await conn.fetch(
        """UPDATE sessions SET status = 'running', worker_id = $1, lease_epoch = lease_epoch + 1,
                  lease_expires_at = now() + interval '5 seconds'
           WHERE session_id = ANY($2::text[]) RETURNING session_id, lease_epoch""",
        WORKER,
        session_ids,
    )
    return {row["session_id"]: row["lease_epoch"] for row in rows}


async def _expiry(conn: asyncpg.Connection, session_id: str) -> datetime:
    value = await conn.fetchval(
        "SELECT lease_expires_at FROM sessions WHERE session_id = $1", session_id
    )
    assert isinstance(value, datetime)
    return value


async def test_a_busy_row_neither_stalls_the_heartbeat_nor_the_other_sessions(
    api: Api, context: AppContext
) -> None:
    await api.create_agent(name="idle", **script({"text": "x"}))
    busy, other, gone = [(await api.start("idle", f"s{i}"))["id"] for i in range(3)]
    pool = await create_pool(context.database_url, max_size=4)
    try:
        async with pool.acquire() as conn:
            epochs = await _run_by_us(conn, [busy, other, gone])
            before = {sid: await _expiry(conn, sid) for sid in (busy, other)}
        async with pool.acquire() as holder:
            # A step of `busy` is being written: its row is locked until we let go.
            locking = holder.transaction()
            await locking.start()
            await holder.execute(
                "SELECT 1 FROM sessions WHERE session_id = $1 FOR NO KEY UPDATE", busy
            )
            leases = {busy: epochs[busy], other: epochs[other], gone: epochs[gone] - 1}
            beat = asyncio.create_task(RuntimeStore(pool).heartbeat(WORKER, leases, 60, pool=pool))
            async with pool.acquire() as conn:
                # `other`'s lease is extended and committed while `busy` is still locked...
                for _ in range(200):
                    if await _expiry(conn, other) > before[other]:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the heartbeat did not extend the free row first")
                # ... and nothing of the heartbeat holds it: its session can write a step now.
                await asyncio.wait_for(
                    conn.execute(
                        "UPDATE sessions SET updated_at = now() WHERE session_id = $1", other
                    ),
                    2,
                )
            assert not beat.done()  # still coming back for the busy row
            await locking.rollback()
        held = await asyncio.wait_for(beat, 5)
        assert held == {busy: False, other: False}  # `gone`: another epoch, not ours any more
        async with pool.acquire() as conn:
            assert await _expiry(conn, busy) > before[busy]
    finally:
        await pool.close()

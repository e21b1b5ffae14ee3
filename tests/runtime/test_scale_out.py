"""Scale-out and fairness.

- 300 sessions over 3 worker processes while workers are SIGKILLed at random and restarted:
  every session ends exactly once, none is lost, none is run by two workers at once
  (fenced writes keep each session's event numbering gap-free and single-writer), and no
  non-idempotent refund happens twice.
- Tenant A floods the queue with 500 sessions, tenant B adds 5: B's finish while A's queue
  is still long.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

from sqlalchemy import func, select, text

from app.api.context import AppContext
from app.tenants import repository as tenants_repository
from app.tools.demo_models import DemoRefund
from tests.conftest import TokenFactory
from tests.runtime.processes import WorkerProcess
from tests.runtime_fixtures import Api, PoolFactory, script

SESSIONS = 300


async def test_300_sessions_over_3_workers_with_random_sigkills(
    api: Api, context: AppContext, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(7)
    ids = [
        s["id"]
        for s in await asyncio.gather(
            *(
                api.start("support", {"order_id": f"ord_100{1 + i % 8}", "amount": 1})
                for i in range(SESSIONS)
            )
        )
    ]
    workers = [
        WorkerProcess(
            database_url, redis_url, tmp_path / f"w{i}.log", concurrency=8, lease_seconds=2
        )
        for i in range(3)
    ]
    kills = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            async with context.session_factory() as db:
                unfinished = (
                    await db.execute(
                        text(
                            "SELECT count(*) FROM sessions WHERE tenant_id = :t AND status IN ('queued', 'running')"
                        ),
                        {"t": api.tenant},
                    )
                ).scalar_one()
            if unfinished == 0:
                break
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            if kills < 6:
                victim = rng.randrange(len(workers))
                workers[victim].signal(signal.SIGKILL)
                workers[victim].wait_exit()
                kills += 1
                workers[victim] = WorkerProcess(
                    database_url,
                    redis_url,
                    tmp_path / f"w{victim}-{kills}.log",
                    concurrency=8,
                    lease_seconds=2,
                )
        assert unfinished == 0, f"{unfinished} sessions never finished"
    finally:
        for worker in workers:
            worker.stop()

    async with context.session_factory() as db:
        statuses = dict(
            (
                await db.execute(
                    text(
                        "SELECT status, count(*) FROM sessions WHERE tenant_id = :t GROUP BY status"
                    ),
                    {"t": api.tenant},
                )
            ).all()
        )
        terminal_events = (
            await db.execute(
                text(
                    "SELECT session_id, count(*) FROM session_events e JOIN sessions s USING (session_id)"
                    " WHERE s.tenant_id = :t AND e.type IN ('session.completed', 'session.failed')"
                    " GROUP BY session_id"
                ),
                {"t": api.tenant},
            )
        ).all()
        gaps = (
            await db.execute(
                text(
                    "SELECT count(*) FROM (SELECT session_id, max(seq) AS m, count(*) AS n FROM session_events"
                    " WHERE session_id = ANY(:ids) GROUP BY session_id) x WHERE m <> n"
                ),
                {"ids": ids},
            )
        ).scalar_one()
        double_refunds = (
            await db.execute(
                select(func.count()).select_from(
                    select(DemoRefund.session_id)
                    .where(DemoRefund.session_id.in_(ids))
                    .group_by(DemoRefund.session_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
        ).scalar_one()
        running = await tenants_repository.running_sessions(db, api.tenant)
    assert statuses == {"completed": SESSIONS}, statuses
    assert len(terminal_events) == SESSIONS and all(n == 1 for _, n in terminal_events)
    assert gaps == 0
    assert double_refunds == 0
    assert running == 0  # the tenant's running counter came back to zero
    assert kills == 6


async def test_a_flooding_tenant_does_not_starve_another(
    client: object,
    make_token: TokenFactory,
    tenant: str,
    start_pool: PoolFactory,
    context: AppContext,
) -> None:
    flood = Api(client, tenant + "-a", make_token)  # type: ignore[arg-type]
    small = Api(client, tenant + "-b", make_token)  # type: ignore[arg-type]
    slow = script({"text": "working", "delay_ms": 50}, {"text": "done", "delay_ms": 50})
    await flood.create_agent(name="slow", **slow)
    await small.create_agent(name="slow", **slow)
    for batch in range(10):
        await asyncio.gather(*(flood.start("slow", f"a{batch}-{i}") for i in range(50)))
    small_ids = [(await small.start("slow", f"b{i}"))["id"] for i in range(5)]
    await start_pool(concurrency=8)
    for session_id in small_ids:
        assert (await small.wait(session_id, within_seconds=30))["status"] == "completed"
    async with context.session_factory() as db:
        still_queued = (
            await db.execute(
                text("SELECT count(*) FROM sessions WHERE tenant_id = :t AND status = 'queued'"),
                {"t": flood.tenant},
            )
        ).scalar_one()
    assert still_queued > 400, f"B finished only after A's queue drained to {still_queued}"

"""Scheduling: priorities, per-tenant running caps, graceful shutdown on SIGTERM, and the
in-process pool of `serve --workers N`."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.api.context import AppContext
from tests.conftest import TokenFactory, bearer
from tests.runtime.processes import ServeProcess, WorkerProcess
from tests.runtime_fixtures import Api, PoolFactory, script


async def _running_count(context: AppContext, tenant: str) -> int:
    async with context.session_factory() as db:
        return int(
            (
                await db.execute(
                    text(
                        "SELECT count(*) FROM sessions WHERE tenant_id = :t AND status = 'running'"
                    ),
                    {"t": tenant},
                )
            ).scalar_one()
        )


async def test_higher_priority_sessions_are_claimed_first(
    api: Api, start_pool: PoolFactory, context: AppContext
) -> None:
    await api.create_agent(name="quick", **script({"text": "done"}))
    low = [(await api.start("quick", f"low {i}", priority=-5))["id"] for i in range(5)]
    high = [(await api.start("quick", f"high {i}", priority=50))["id"] for i in range(5)]
    await start_pool(concurrency=1)
    finished: dict[str, Any] = {}
    for session_id in low + high:
        finished[session_id] = (await api.wait(session_id))["finished_at"]
    assert max(finished[s] for s in high) < min(finished[s] for s in low)


async def test_a_tenant_never_runs_more_than_its_cap(
    api: Api, start_pool: PoolFactory, context: AppContext
) -> None:
    await api.create_agent(name="slow", **script({"text": "working", "delay_ms": 300}))
    await api.http.get("/v1/me", headers=api.headers)  # the tenant exists
    async with context.session_factory.begin() as db:
        await db.execute(
            text("UPDATE tenants SET max_running_sessions = 2 WHERE tenant_id = :t"),
            {"t": api.tenant},
        )
    ids = [(await api.start("slow", f"s{i}"))["id"] for i in range(8)]
    await start_pool(concurrency=8)
    peak = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        peak = max(peak, await _running_count(context, api.tenant))
        statuses = {(await api.get(s))["status"] for s in ids}
        if statuses == {"completed"}:
            break
        await asyncio.sleep(0.02)
    assert statuses == {"completed"}
    assert peak == 2


async def test_a_tenant_over_its_lowered_cap_waits_and_others_still_run(
    client: httpx.AsyncClient,
    make_token: TokenFactory,
    tenant: str,
    start_pool: PoolFactory,
    context: AppContext,
) -> None:
    """An admin lowers a tenant's cap below what it has running: its queued sessions wait,
    and the claim still serves every other tenant."""
    over = Api(client, tenant + "-over", make_token)
    other = Api(client, tenant + "-other", make_token)
    for api in (over, other):
        await api.create_agent(name="quick", **script({"text": "done"}))
    async with context.session_factory.begin() as db:  # 5 running, cap now 1
        await db.execute(
            text(
                "UPDATE tenants SET max_running_sessions = 1, claimed_sessions = 5 "
                "WHERE tenant_id = :t"
            ),
            {"t": over.tenant},
        )
    waiting = (await over.start("quick", "waits"))["id"]
    runs = (await other.start("quick", "runs"))["id"]
    await start_pool(concurrency=2)
    assert (await other.wait(runs, within_seconds=15))["status"] == "completed"
    await asyncio.sleep(0.5)
    assert (await over.get(waiting))["status"] == "queued"


async def test_sigterm_releases_the_session_and_another_worker_finishes_it(
    api: Api, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    await api.create_agent(
        name="long",
        tools=["lookup_order"],
        **script(
            {
                "tool_use": [{"name": "lookup_order", "input": {"order_id": "ord_1001"}}],
                "delay_ms": 1500,
            },
            {
                "tool_use": [{"name": "lookup_order", "input": {"order_id": "ord_1002"}}],
                "delay_ms": 1500,
            },
            {"text": "end"},
        ),
    )
    first = WorkerProcess(database_url, redis_url, tmp_path / "first.log", lease_seconds=10)
    second: WorkerProcess | None = None
    try:
        session = await api.start("long", "go")
        await api.wait(session["id"], until=("running",))
        first.signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(first.wait_exit, 20)
        assert code == 0, first.log()[-2000:]
        assert time.monotonic() - started < 10  # finished the step in flight, then left
        released = await api.get(session["id"])
        assert released["status"] == "queued"  # handed back at once, not after the 10 s lease
        events = await api.events(session["id"])
        assert (
            events[-1]["type"] == "session.queued"
            and events[-1]["data"]["reason"] == "worker shutting down"
        )
        second = WorkerProcess(database_url, redis_url, tmp_path / "second.log")
        done = await api.wait(session["id"], within_seconds=30)
        assert done["status"] == "completed" and done["turns"] == 3
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_serve_with_workers_runs_sessions_in_the_api_process(
    database_url: str, redis_url: str, tenant: str, make_token: TokenFactory, tmp_path: Path
) -> None:
    server = ServeProcess(database_url, redis_url, tmp_path / "serve.log", workers=2)
    try:
        await asyncio.to_thread(server.wait_ready)
        await _support_sessions_complete(server, bearer(make_token(tenant)), 1)
    finally:
        code = await asyncio.to_thread(server.stop)
    # uvicorn re-raises the signal it handled once shutdown is complete.
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log_path.read_text()


async def test_serve_with_two_processes_shares_the_port_and_runs_sessions(
    database_url: str, redis_url: str, tenant: str, make_token: TokenFactory, tmp_path: Path
) -> None:
    """`serve --processes 2`: two API processes (each with its worker slots) behind one
    port; both load the YAML agents at start-up without tripping over each other."""
    import psutil

    server = ServeProcess(database_url, redis_url, tmp_path / "serve.log", workers=1, processes=2)
    try:
        await asyncio.to_thread(server.wait_ready)
        children = psutil.Process(server.process.pid).children()
        assert len([c for c in children if "spawn_main" in " ".join(c.cmdline())]) == 2
        await _support_sessions_complete(server, bearer(make_token(tenant)), 6)
    finally:
        code = await asyncio.to_thread(server.stop)
    assert code in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log_path.read_text()


async def _support_sessions_complete(
    server: ServeProcess, headers: dict[str, str], sessions: int
) -> None:
    """Start `sessions` support sessions on `server`; each is accepted and completes."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
        created = [
            await http.post(
                "/v1/sessions",
                json={"agent": "support", "input": {"order_id": "ord_1003", "amount": 1}},
                headers=headers,
            )
            for _ in range(sessions)
        ]
        assert [r.status_code for r in created] == [202] * sessions, created[0].text
        for response in created:
            session = (
                await http.get(
                    f"/v1/sessions/{response.json()['id']}",
                    params={"wait_seconds": 20},
                    headers=headers,
                )
            ).json()
            assert session["status"] == "completed", session

"""`POST /v1/sessions`: the agent look-up and the insert are one statement; what it reads of
the agent (version, deadline) is right, and a create racing an agent update still lands."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app.api.context import AppContext
from app.db.engine import create_engine, driver_connection
from app.embedded import _free_port
from app.main import create_app
from app.observability import audit
from app.sessions import service as sessions_service
from app.sessions.models import Session
from app.tenants.scoping import TenantScope
from tests.conftest import TokenFactory, bearer, client_for, make_settings


@pytest.fixture(autouse=True)
async def _cancel_leftover_sessions(context: AppContext, tenant: str) -> AsyncIterator[None]:
    """Sessions these tests leave queued must not be run by a later test's worker pool."""
    yield
    async with context.session_factory.begin() as db:
        rows = await db.execute(
            select(Session.session_id).where(
                Session.tenant_id == tenant, Session.status == "queued"
            )
        )
        for session_id in rows.scalars().all():
            await sessions_service.cancel(TenantScope(db, tenant), session_id)


async def _post_agent(
    http: httpx.AsyncClient, headers: dict[str, str], **definition: Any
) -> dict[str, Any]:
    response = await http.post("/v1/agents", json=definition, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _deadline_seconds(context: AppContext, session_id: str) -> float:
    async with context.session_factory() as db:
        row = (
            await db.execute(
                select(Session.created_at, Session.deadline_at).where(
                    Session.session_id == session_id
                )
            )
        ).one()
    assert row.deadline_at is not None
    return (row.deadline_at - row.created_at).total_seconds()


async def test_the_deadline_and_version_come_from_the_version_the_session_runs(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    admin = bearer(make_token(tenant, sub="root", roles=("admin",)))
    await _post_agent(client, admin, name="timed", limits={"deadline_seconds": 120})
    await _post_agent(client, admin, name="timed", limits={"deadline_seconds": 45})

    current = await client.post(
        "/v1/sessions", json={"agent": "timed", "input": "x"}, headers=admin
    )
    pinned = await client.post(
        "/v1/sessions", json={"agent": "timed", "version": 1, "input": "x"}, headers=admin
    )
    assert (current.status_code, pinned.status_code) == (202, 202), (current.text, pinned.text)
    assert current.json()["agent_version"] == 2 and pinned.json()["agent_version"] == 1
    assert await _deadline_seconds(context, current.json()["id"]) == pytest.approx(45, abs=1)
    assert await _deadline_seconds(context, pinned.json()["id"]) == pytest.approx(120, abs=1)


async def test_a_tenants_own_agent_shadows_the_platform_agent_of_that_name(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    admin = bearer(make_token(tenant, sub="root", roles=("admin",)))
    platform = await client.post(
        "/v1/sessions", json={"agent": "support", "input": "x"}, headers=admin
    )
    assert platform.status_code == 202, platform.text
    own = await _post_agent(client, admin, name="support", description="ours")
    mine = await client.post("/v1/sessions", json={"agent": "support", "input": "x"}, headers=admin)
    assert mine.status_code == 202, mine.text
    assert mine.json()["agent_version"] == own["version"]
    # Disabling ours refuses new sessions: the platform agent does not stand in for it.
    await _post_agent(client, admin, name="support", enabled=False)
    refused = await client.post(
        "/v1/sessions", json={"agent": "support", "input": "x"}, headers=admin
    )
    assert refused.status_code == 409 and refused.json()["type"].endswith("/agent-disabled")


async def test_creates_racing_new_versions_of_their_agent_all_land(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    # A create that waits on the agent row's lock while a new version is written reads
    # nothing in its one statement (the join saw the old version); it must then look again
    # and still create the session — never a 404, 409 or 500.
    admin = bearer(make_token(tenant, sub="root", roles=("admin",)))
    await _post_agent(client, admin, name="moving")

    async def bump(version: int) -> httpx.Response:
        await asyncio.sleep(0.002 * version)
        return await client.post(
            "/v1/agents", json={"name": "moving", "description": f"v{version}"}, headers=admin
        )

    results = await asyncio.gather(
        *(client.post("/v1/sessions", json={"agent": "moving", "input": "x"}, headers=admin)
          for _ in range(30)),
        *(bump(version) for version in range(2, 7)),
    )  # fmt: skip
    creates, bumps = results[:30], results[30:]
    assert [r.status_code for r in bumps] == [201] * 5
    assert [r.status_code for r in creates] == [202] * 30, [r.text for r in creates]
    assert {r.json()["agent_version"] for r in creates} <= set(range(1, 7))


async def test_concurrent_creates_share_statements_and_each_is_whole(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    # Requests that have written nothing else insert through the SessionCreator: those that
    # wait together share one statement and commit. Each still gets its own answer — a
    # missing or disabled agent refuses only that request — and each created session is
    # whole: its row, first event and audit entry (the tenant's chains verify).
    admin = bearer(make_token(tenant, sub="root", roles=("admin",)))
    await _post_agent(client, admin, name="off", enabled=False)
    await client.get("/v1/agents", headers=admin)  # the tenant's row is known from here on
    statements_before = context.session_creator.statements
    agents = ["support"] * 9 + ["no-such-agent"] * 2 + ["off"]
    responses = await asyncio.gather(
        *(client.post("/v1/sessions", json={"agent": a, "input": {"n": n}}, headers=admin)
          for n, a in enumerate(agents))
    )  # fmt: skip
    codes = [response.status_code for response in responses]
    assert codes == [202] * 9 + [404] * 2 + [409], [r.text for r in responses]
    assert "not found" in responses[9].json()["detail"]
    assert "disabled" in responses[11].json()["detail"]
    statements = context.session_creator.statements - statements_before
    assert 1 <= statements < 9, statements  # fewer statements than sessions

    created = {response.json()["id"]: response.json()["input"] for response in responses[:9]}
    assert sorted(n["n"] for n in created.values()) == list(range(9))
    async with context.session_factory() as db:
        conn = await driver_connection(db)
        rows = await conn.fetch(
            "SELECT s.session_id, s.input::text, e.type::text AS event, count(a.audit_id) AS audits"
            " FROM sessions s JOIN session_events e ON e.session_id = s.session_id AND e.seq = 1"
            " LEFT JOIN audit_log a ON a.session_id = s.session_id"
            " WHERE s.tenant_id = $1 GROUP BY 1, 2, 3",
            tenant,
        )
        assert {row["session_id"] for row in rows} == set(created)  # nothing for the refused
        for row in rows:
            assert json.loads(row["input"]) == created[row["session_id"]]
            assert (row["event"], row["audits"]) == ("session.queued", 1)
        assert (await audit.verify(conn, tenant)).ok


async def test_a_batch_that_cannot_reach_the_database_answers_each_request_503(
    context_factory: Any, database_url: str, tenant: str, make_token: TokenFactory
) -> None:
    # The creates of a batch wait on one statement: if its connection cannot be had, each
    # waiting request gets the database-unavailable problem (none hangs, none is a 500),
    # and nothing is written.
    settings = make_settings()
    context = context_factory(settings)
    app = create_app(settings, context=context)
    admin = bearer(make_token(tenant, sub="root", roles=("admin",)))
    nowhere = (
        make_url(database_url)
        .set(host="127.0.0.1", port=_free_port(), query={})
        .render_as_string(hide_password=False)
    )
    async with client_for(app) as http:
        assert (await http.get("/v1/me", headers=admin)).status_code == 200  # tenant known
        context.session_creator.engine = create_engine(settings.database, nowhere)
        try:
            responses = await asyncio.wait_for(
                asyncio.gather(
                    *(http.post("/v1/sessions", json={"agent": "support", "input": {"n": n}}, headers=admin)
                      for n in range(3))
                ),
                timeout=30,
            )  # fmt: skip
        finally:
            await context.session_creator.engine.dispose()
            context.session_creator.engine = context.engine
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.json()["type"].endswith("database-unavailable")
    async with context.session_factory() as db:
        count = await db.scalar(
            select(func.count()).select_from(Session).where(Session.tenant_id == tenant)
        )
    assert count == 0

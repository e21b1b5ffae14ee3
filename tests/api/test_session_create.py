"""`POST /v1/sessions`: the agent look-up and the insert are one statement; what it reads of
the agent (version, deadline) is right, and a create racing an agent update still lands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.api.context import AppContext
from app.sessions import service as sessions_service
from app.sessions.models import Session
from app.tenants.scoping import TenantScope
from tests.conftest import TokenFactory, bearer


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

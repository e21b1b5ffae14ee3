"""The request's transaction (`deps.TransactionalRoute`): what a route writes is committed
before its response is sent, and nothing of it is kept if the route fails — even after it
wrote."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from app.api.context import AppContext
from app.api.deps import DbSession, api_router
from app.errors import Conflict
from app.tenants import repository as tenants


def _routes() -> Any:
    router = api_router(prefix="/test-only/transactions")

    @router.post("/{tenant_id}")
    async def write(tenant_id: str, db: DbSession) -> dict[str, str]:
        await tenants.insert_if_missing(db, tenant_id, 5)
        return {"written": tenant_id}

    @router.post("/{tenant_id}/then-fail")
    async def write_then_fail(tenant_id: str, db: DbSession) -> dict[str, str]:
        await tenants.insert_if_missing(db, tenant_id, 5)
        raise Conflict("refused after writing")

    @router.post("/{tenant_id}/then-crash")
    async def write_then_crash(tenant_id: str, db: DbSession) -> dict[str, str]:
        await tenants.insert_if_missing(db, tenant_id, 5)
        raise RuntimeError("a bug after writing")

    return router


async def _exists(context: AppContext, tenant_id: str) -> bool:
    async with context.session_factory() as db:  # another connection: committed rows only
        return await tenants.get(db, tenant_id) is not None


async def test_a_route_that_returns_has_committed_before_its_response(
    app: FastAPI, client: httpx.AsyncClient, context: AppContext, tenant: str
) -> None:
    app.include_router(_routes())
    response = await client.post(f"/test-only/transactions/{tenant}-ok")
    assert response.status_code == 200
    assert await _exists(context, f"{tenant}-ok")


async def test_a_route_that_fails_after_writing_leaves_nothing(
    app: FastAPI, context: AppContext, tenant: str
) -> None:
    app.include_router(_routes())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        refused = await http.post(f"/test-only/transactions/{tenant}-refused/then-fail")
        crashed = await http.post(f"/test-only/transactions/{tenant}-crashed/then-crash")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert crashed.status_code == 500
    assert not await _exists(context, f"{tenant}-refused")
    assert not await _exists(context, f"{tenant}-crashed")

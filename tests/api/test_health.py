"""Liveness, readiness (naming what is down) and the metrics endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.main import create_app
from tests.conftest import client_for, make_settings
from tests.fixtures_redis import DedicatedRedis


async def test_healthz_and_readyz_when_all_is_well(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "redis": "ok"}


async def test_metrics_exposition(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'agent_http_requests_total{method="GET",route="/healthz",status="200"}' in response.text


async def test_readyz_names_redis_when_down_and_recovers(
    context_factory: Any, dedicated_redis: DedicatedRedis
) -> None:
    settings = make_settings()
    app = create_app(settings, context=context_factory(settings, redis_url=dedicated_redis.url))
    async with client_for(app) as http:
        assert (await http.get("/readyz")).status_code == 200
        dedicated_redis.stop()
        down = await http.get("/readyz")
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        body = down.json()
        assert "redis" in body["detail"]
        assert body["checks"]["redis"].startswith("down")
        assert body["checks"]["database"] == "ok"
        dedicated_redis.start()
        recovered: httpx.Response | None = None
        for _ in range(20):
            recovered = await http.get("/readyz")
            if recovered.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert recovered is not None and recovered.status_code == 200


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-ID": "req-abc.123"})
    assert echoed.headers["x-request-id"] == "req-abc.123"
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    # A malformed id is replaced, not echoed (no header injection through it).
    replaced = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert replaced.headers["x-request-id"] != "bad id with spaces"
    problem = await client.get("/no/such/route", headers={"X-Request-ID": "req-404"})
    assert problem.status_code == 404 and problem.json()["request_id"] == "req-404"


async def test_openapi_and_docs_render(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/v1/me",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/agents",
        "/v1/tools",
        "/readyz",
    ):
        assert path in spec["paths"], path
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_method_not_allowed_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/me")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_unreachable_database_is_a_503_problem_not_a_500(
    context_factory: Any, database_url: str, make_token: Any, tenant: str
) -> None:
    from sqlalchemy.engine import make_url

    from app.embedded import _free_port

    # A server that is not there: connections are refused at once.
    nowhere = (
        make_url(database_url)
        .set(host="127.0.0.1", port=_free_port(), query={})
        .render_as_string(hide_password=False)
    )
    settings = make_settings()
    app = create_app(settings, context=context_factory(settings, database_url=nowhere))
    async with client_for(app) as http:
        response = await http.get(
            "/v1/me", headers={"Authorization": f"Bearer {make_token(tenant)}"}
        )
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("database-unavailable")
        assert response.headers["retry-after"] == "2"
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("down")

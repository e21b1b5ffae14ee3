"""Runtime test wiring, a pytest plugin of the root conftest: in-process worker pools on the
test database, and helpers to create agents and sessions over HTTP and wait for them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.api.context import AppContext
from app.llm.providers import ModelResolver
from app.runtime.worker import WorkerPool
from app.settings import RuntimeSettings
from app.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import TokenFactory, bearer

FAST_RUNTIME = RuntimeSettings(
    lease_ttl_seconds=3,
    heartbeat_interval_seconds=0.5,
    reaper_interval_seconds=0.5,
    poll_interval_seconds=0.5,
    shutdown_grace_seconds=5,
)

PoolFactory = Callable[..., Awaitable[WorkerPool]]
ALLOW_ALL = {"rules": [{"tool": ".*", "decision": "allow"}]}


@pytest.fixture
async def start_pool(context: AppContext) -> AsyncIterator[PoolFactory]:
    """Start worker pools in this process; all are drained at the end of the test."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(
        concurrency: int = 4,
        *,
        models: ModelResolver | None = None,
        settings: RuntimeSettings = FAST_RUNTIME,
        webhooks: WebhookDispatcher | None = None,
    ) -> WorkerPool:
        pool = WorkerPool(
            settings,
            context.database_url,
            concurrency=concurrency,
            session_factory=context.session_factory,
            models=models or context.models,
            tools=context.tools,
            redis_url=context.redis_url,
            webhooks=webhooks,
            credential_cipher=context.credential_cipher,
        )
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(pool.run(stop))))
        return pool

    yield start
    for stop, _ in running:
        stop.set()
    await asyncio.gather(*(task for _, task in running), return_exceptions=True)


class Api:
    """A tenant's view of the API, with an admin+client token."""

    def __init__(self, http: httpx.AsyncClient, tenant: str, make_token: TokenFactory) -> None:
        self.http = http
        self.tenant = tenant
        self.headers = bearer(make_token(tenant, sub="tester", roles=("client", "admin")))

    async def create_agent(self, **definition: Any) -> dict[str, Any]:
        # Policies deny by default; runtime tests that are not about policy allow every tool.
        definition.setdefault("policy", ALLOW_ALL)
        response = await self.http.post("/v1/agents", json=definition, headers=self.headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def start(self, agent: str, input: Any, **extra: Any) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/sessions", json={"agent": agent, "input": input, **extra}, headers=self.headers
        )
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def get(self, session_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/sessions/{session_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait(
        self,
        session_id: str,
        *,
        within_seconds: float = 20,
        until: tuple[str, ...] = ("completed", "failed", "cancelled", "timed_out"),
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within_seconds
        while True:
            session = await self.get(session_id)
            if session["status"] in until:
                return session
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"session still {session['status']} after {within_seconds}s: {session}"
                )
            await asyncio.sleep(0.05)

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/v1/sessions/{session_id}/events", headers=self.headers)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def tool_calls(self, session_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(
            f"/v1/sessions/{session_id}/tool-calls", headers=self.headers
        )
        assert response.status_code == 200, response.text
        return list(response.json()["items"])


@pytest.fixture
def api(client: httpx.AsyncClient, tenant: str, make_token: TokenFactory) -> Api:
    return Api(client, tenant, make_token)


def script(*turns: dict[str, Any]) -> dict[str, Any]:
    return {"model": "offline", "offline": {"script": list(turns)}}


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "input": arguments}


@pytest.fixture(autouse=True)
async def _leave_no_queued_sessions(tenant: str, context: AppContext) -> AsyncIterator[None]:
    """Sessions a test leaves queued (a flood it did not wait for) would be claimed by the
    next test's workers; end them once the test is over (test clean-up, not a transition)."""
    yield
    from sqlalchemy import text

    async with context.session_factory.begin() as db:
        await db.execute(
            text(
                "UPDATE sessions SET status = 'cancelled', finished_at = now() "
                "WHERE tenant_id LIKE :prefix AND status = 'queued'"
            ),
            {"prefix": f"{tenant}%"},
        )

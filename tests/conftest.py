"""Test wiring: real PostgreSQL (+pgvector) and real Valkey, never mocks.

One freshly created and migrated database per test run on the checkout's embedded
PostgreSQL (or on DATABASE_URL's server when set), dropped at the end; Redis database 1 of
the embedded Valkey (or REDIS_URL), flushed at the start. Tests isolate themselves by
using their own tenant ids.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.api.auth import mint_token
from app.api.context import AppContext
from app.db.migrations import upgrade
from app.embedded import resolve_database_url, resolve_redis_url
from app.main import build_context, close_context, create_app
from app.settings import AuthSettings, Environment, Settings
from app.tools.registry import ToolRegistry
from app.worker_main import load_agents

pytest_plugins = ["tests.fixtures_redis", "tests.runtime_fixtures", "tests.llm.fake_server"]

TEST_JWT_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": Environment.TEST,
        "log_json": False,
        "auth": AuthSettings(jwt_secret=TEST_JWT_SECRET),
        "migrations_dir": PROJECT_ROOT / "migrations",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return make_settings()


async def _admin_execute(server_url: str, statement: str) -> None:
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def server_database_url(base_settings: Settings) -> str:
    """The URL of the PostgreSQL server tests use (embedded unless DATABASE_URL is set)."""
    return resolve_database_url(base_settings)


@pytest.fixture(scope="session")
def database_url(server_database_url: str) -> Iterator[str]:
    """A brand-new database, migrated to head, for this test run."""
    name = f"agent_platform_test_{uuid.uuid4().hex[:12]}"
    url = make_url(server_database_url)
    admin_url = url.set(database="postgres").render_as_string(hide_password=False)
    test_url = url.set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin_execute(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        upgrade(PROJECT_ROOT / "migrations", test_url)
        # What start-up does in every process: load the YAML agents (the `support` demo).
        asyncio.run(load_agents(make_settings(), test_url, ToolRegistry()))
        yield test_url
    finally:
        asyncio.run(_admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database_url(server_database_url: str) -> Iterator[str]:
    """A database of this test's own with nothing in it (not even migrations)."""
    name = f"agent_platform_empty_{uuid.uuid4().hex[:10]}"
    url = make_url(server_database_url)
    admin = url.set(database="postgres").render_as_string(hide_password=False)
    asyncio.run(_admin_execute(admin, f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url(base_settings: Settings) -> str:
    url = resolve_redis_url(base_settings)
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}db=1" if url.startswith("unix://") else url.rstrip("/") + "/1"


@pytest.fixture
async def context_factory(
    database_url: str, redis_url: str
) -> AsyncIterator[Callable[..., AppContext]]:
    made: list[AppContext] = []

    def factory(settings: Settings | None = None, **urls: str) -> AppContext:
        context = build_context(
            settings or make_settings(),
            database_url=urls.get("database_url", database_url),
            redis_url=urls.get("redis_url", redis_url),
        )
        made.append(context)
        return context

    yield factory
    for context in made:
        await close_context(context)


@pytest.fixture
async def context(context_factory: Callable[..., AppContext]) -> AppContext:
    return context_factory()


@pytest.fixture
def app(context: AppContext) -> FastAPI:
    return create_app(context.settings, context=context)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


@pytest.fixture
def tenant() -> str:
    """A tenant id of this test's own, so tests never see each other's data or limits."""
    return f"t-{uuid.uuid4().hex[:10]}"


TokenFactory = Callable[..., str]


@pytest.fixture
def make_token(base_settings: Settings) -> TokenFactory:
    def factory(
        tenant: str, sub: str = "alice", roles: tuple[str, ...] = ("client",), ttl: int = 600
    ) -> str:
        return mint_token(
            base_settings.auth, tenant=tenant, sub=sub, roles=list(roles), ttl_seconds=ttl
        )

    return factory


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


os.environ.setdefault("TZ", "UTC")

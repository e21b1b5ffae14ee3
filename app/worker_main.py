"""The one place a worker process is wired: settings → engine → YAML agents → pool."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from sqlalchemy.ext.asyncio import AsyncEngine

from app.agents import service as agents_service
from app.credentials.service import CredentialCipher
from app.db import models as _all_models  # noqa: F401  (every table known to the ORM)
from app.db.engine import create_engine, create_session_factory
from app.llm.pricing import PriceTable
from app.llm.providers import ModelResolver
from app.runtime.worker import WorkerPool
from app.settings import Settings
from app.tools.registry import ToolRegistry
from app.webhooks.dispatcher import WebhookDispatcher

logger = logging.getLogger(__name__)


async def load_agents(settings: Settings, database_url: str, tools: ToolRegistry) -> None:
    """Create or update the platform-wide agents from the YAML folder (idempotent)."""
    engine = create_engine(settings.database, database_url)
    try:
        async with create_session_factory(engine).begin() as db:
            await agents_service.load_yaml_agents(db, tools, settings.agents_dir)
    finally:
        await engine.dispose()


def build_pool(
    settings: Settings,
    database_url: str,
    concurrency: int,
    *,
    models: ModelResolver | None = None,
    tools: ToolRegistry | None = None,
    redis_url: str | None = None,
) -> tuple[WorkerPool, AsyncEngine]:
    """A pool and the engine its tools use (dispose it after the pool stops)."""
    engine = create_engine(settings.database, database_url)
    if models is None and redis_url is not None:
        models = ModelResolver.from_settings(settings, redis_url)
    pool = WorkerPool(
        settings.runtime,
        database_url,
        concurrency=concurrency,
        session_factory=create_session_factory(engine),
        models=models,
        tools=tools,
        redis_url=redis_url,
        redis_timeout_seconds=settings.redis.socket_timeout_seconds,
        webhooks=WebhookDispatcher(settings.webhooks, settings.outbound_allowlist),
        retention=settings.retention,
        prices=PriceTable(settings.llm.prices),
        credential_cipher=CredentialCipher(settings.credentials.encryption_key.get_secret_value()),
    )
    return pool, engine


async def run_worker(
    settings: Settings,
    database_url: str,
    concurrency: int,
    redis_url: str | None = None,
    *,
    tools: ToolRegistry | None = None,
) -> None:
    """`agent-platform worker`: run a pool until SIGTERM/SIGINT, then drain. `tools`: a
    registry with more Python tools than the built-ins (plugins, benchmarks)."""
    tools = tools or ToolRegistry()
    await load_agents(settings, database_url, tools)
    pool, engine = build_pool(settings, database_url, concurrency, tools=tools, redis_url=redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # What start-up built (modules, settings, registries) lives as long as the process:
    # keep it out of the garbage collector's full scans.
    gc.freeze()
    try:
        await pool.run(stop)
    finally:
        await pool.models.aclose()
        await engine.dispose()

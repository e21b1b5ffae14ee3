"""The one place the API process is wired: `create_app(settings)` and its lifespan."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.agents import service as agents_service
from app.api.auth import TokenVerifier
from app.api.context import AppContext
from app.api.middleware import RequestContextMiddleware
from app.api.problems import install_problem_handlers
from app.api.rate_limit import RateLimiter
from app.api.routes import (
    agents,
    approvals,
    audit,
    credentials,
    health,
    me,
    sessions,
    tools,
    usage,
    webhooks,
)
from app.credentials.service import CredentialCipher
from app.db import models as _all_models  # noqa: F401  (every table known to the ORM)
from app.db.engine import create_engine, create_session_factory
from app.embedded import resolve_database_url, resolve_redis_url
from app.llm.pricing import PriceTable
from app.llm.providers import ModelResolver
from app.redis_client import create_redis
from app.runtime.worker import WorkerPool
from app.sessions.creation import SessionCreator
from app.sessions.feed import SessionFeedHub
from app.settings import Settings, get_settings
from app.tenants.service import TenantRegistry
from app.tools.registry import ToolRegistry
from app.webhooks.dispatcher import WebhookDispatcher

API_DESCRIPTION = """\
Runs LLM agents for product backends, durably and safely. Authenticate with
`Authorization: Bearer <JWT>` (claims `sub`, `tenant`, `roles`); errors are
`application/problem+json`.
"""


def build_context(
    settings: Settings, *, database_url: str | None = None, redis_url: str | None = None
) -> AppContext:
    database_url = database_url or resolve_database_url(settings)
    redis_url = redis_url or resolve_redis_url(settings)
    engine = create_engine(settings.database, database_url)
    session_factory = create_session_factory(engine)
    return AppContext(
        settings=settings,
        database_url=database_url,
        redis_url=redis_url,
        engine=engine,
        session_factory=session_factory,
        redis=create_redis(settings.redis, redis_url),
        rate_limiter=RateLimiter(settings.rate_limit, settings.redis, redis_url),
        token_verifier=TokenVerifier(settings.auth),
        tenants=TenantRegistry(settings.tenant_defaults),
        tools=ToolRegistry(),
        models=ModelResolver.from_settings(settings, redis_url),
        session_creator=SessionCreator(engine),
        credential_cipher=CredentialCipher(settings.credentials.encryption_key.get_secret_value()),
        feed=SessionFeedHub(
            session_factory,
            redis_url,
            connect_timeout_seconds=settings.redis.connect_timeout_seconds,
        ),
    )


async def close_context(context: AppContext) -> None:
    await context.feed.stop()
    await context.models.aclose()
    await context.rate_limiter.close()
    await context.redis.aclose()
    await context.engine.dispose()


def create_app(
    settings: Settings | None = None, *, context: AppContext | None = None, workers: int = 0
) -> FastAPI:
    """The API app. With `workers` > 0 its lifespan also runs a worker pool of that many
    slots in this process (`serve --workers N`)."""
    settings = settings or get_settings()
    context = context or build_context(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with context.session_factory.begin() as db:
            await agents_service.load_yaml_agents(db, context.tools, settings.agents_dir)
        stop = asyncio.Event()
        pool_task: asyncio.Task[None] | None = None
        if workers > 0:
            pool = WorkerPool(
                settings.runtime,
                context.database_url,
                concurrency=workers,
                session_factory=context.session_factory,
                models=context.models,
                tools=context.tools,
                redis_url=context.redis_url,
                redis_timeout_seconds=settings.redis.socket_timeout_seconds,
                webhooks=WebhookDispatcher(settings.webhooks, settings.outbound_allowlist),
                retention=settings.retention,
                prices=PriceTable(settings.llm.prices),
                credential_cipher=context.credential_cipher,
            )
            pool_task = asyncio.create_task(pool.run(stop), name="in-process-worker-pool")
        # What start-up built (modules, settings, registries, the app) lives as long as the
        # process: keep it out of the garbage collector's full scans (as the worker does).
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            if pool_task is not None:
                await pool_task
            await close_context(context)

    app = FastAPI(
        title="Agent Platform",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.context = context
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.api.max_body_bytes)
    # Routes are matched router by router, in this order: the busiest first.
    app.include_router(sessions.router)
    app.include_router(health.router)
    app.include_router(me.router)
    app.include_router(agents.router)
    app.include_router(tools.router)
    app.include_router(webhooks.router)
    app.include_router(approvals.router)
    app.include_router(audit.router)
    app.include_router(credentials.router)
    app.include_router(usage.router)
    return app


SERVE_WORKERS_ENV = "AGENT_PLATFORM_SERVE_WORKERS"


def create_served_app() -> FastAPI:
    """The app of one of `serve --processes N`'s processes (uvicorn imports and calls this
    in each): settings from the environment, where `serve` put the resolved database and
    Redis URLs and its `--workers` count."""
    settings = get_settings()
    return create_app(settings, workers=int(os.environ.get(SERVE_WORKERS_ENV, "0")))

"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import Context, api_router
from app.api.problems import problem
from app.db.migrations import current_revision, head_revision
from app.errors import Unauthorized
from app.observability import metrics

router = api_router(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database, Redis and migrations are OK",
    responses={503: {"description": "A dependency is down; the problem body names it"}},
)
async def readyz(context: Context, request: Request) -> Any:
    checks = dict(
        zip(
            ("database", "migrations", "redis"),
            await asyncio.gather(_database(context), _migrations(context), _redis(context)),
            strict=True,
        )
    )
    for name, result in checks.items():
        metrics.DEPENDENCY_UP.labels(dependency=name).set(1 if result == "ok" else 0)
    failing = {name: result for name, result in checks.items() if result != "ok"}
    if not failing:
        return {"status": "ready", "checks": checks}
    return problem(
        503,
        "not-ready",
        "Not ready",
        "not ready: " + "; ".join(f"{name} {result}" for name, result in failing.items()),
        instance=request.url.path,
        extra={"checks": checks},
    )


@router.get("/metrics", summary="Prometheus exposition", include_in_schema=True)
async def prometheus_metrics(context: Context, request: Request) -> Response:
    token = context.settings.api.metrics_token
    if token is not None:
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied, token.get_secret_value()):
            raise Unauthorized("metrics need `Authorization: Bearer <API_METRICS_TOKEN>`")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _database(context: Context) -> str:
    try:
        async with asyncio.timeout(2.0), context.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"down ({type(exc).__name__})"
    return "ok"


async def _migrations(context: Context) -> str:
    try:
        async with asyncio.timeout(2.0):
            current = await current_revision(context.engine)
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    head = head_revision(context.settings.migrations_dir)
    if current != head:
        return f"behind (at {current or 'empty'}, head {head}; run `agent-platform migrate`)"
    return "ok"


async def _redis(context: Context) -> str:
    timeout = context.settings.redis.socket_timeout_seconds * 2
    try:
        async with asyncio.timeout(timeout):
            await context.redis.ping()
    except Exception as exc:
        return f"down ({type(exc).__name__})"
    return "ok"

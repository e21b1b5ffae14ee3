"""Shared set-up of the benchmarks: a fresh, migrated database on the embedded PostgreSQL
(or DATABASE_URL's server), the bench agent, and measuring helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db.migrations import upgrade  # noqa: E402
from app.embedded import resolve_database_url, resolve_redis_url  # noqa: E402
from app.runtime.store import asyncpg_dsn  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.tools.spec import ToolContext, ToolSpec  # noqa: E402

TOOL_TURNS, TURNS = 3, 4


async def bench_lookup(arguments: dict[str, object], _context: ToolContext) -> dict[str, object]:
    """The peers' tool: returns a constant (no I/O), so we measure the platform, not a tool."""
    return {"q": arguments.get("q"), "value": 42, "ok": True}


BENCH_TOOL = ToolSpec(
    name="bench_lookup",
    description="Look up an item.",
    input_schema={"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    executor=bench_lookup,
    idempotent=True,
)


def bench_agent(delay_ms: int = 0) -> dict[str, object]:
    """3 tool turns (one call each) + a final answer: 4 model turns, as the peers run."""
    turns: list[dict[str, object]] = [
        {"tool_use": [{"name": "bench_lookup", "input": {"q": f"item-{i}"}}], "delay_ms": delay_ms}
        for i in range(TOOL_TURNS)
    ]
    turns.append({"text": "final answer after 3 tool results", "delay_ms": delay_ms})
    return {
        "name": f"bench-{delay_ms}ms",
        "model": "offline",
        "tools": ["bench_lookup"],
        "limits": {"max_turns": 10, "deadline_seconds": 3600},
        "policy": {"rules": [{"tool": "bench_lookup", "decision": "allow"}]},
        "offline": {"script": turns},
    }


BENCH_DATABASE_PREFIX = "agent_platform_bench_"


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


async def _drop_leftover_databases(url: str) -> None:
    """Databases of earlier runs that were killed before they could drop theirs; one still
    in use (a run going on beside this one) has connections and is left alone."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        names = await conn.fetch(
            "SELECT datname FROM pg_database d WHERE starts_with(datname, $1)"
            " AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)",
            BENCH_DATABASE_PREFIX,
        )
        for row in names:
            with contextlib.suppress(asyncpg.PostgresError):  # in use after all
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}"')
    finally:
        await conn.close()


@contextmanager
def bench_database(settings: Settings) -> Iterator[tuple[str, str]]:
    """(database_url, redis_url) of a fresh migrated database, dropped afterwards."""
    server_url = resolve_database_url(settings)
    redis_url = resolve_redis_url(settings)
    name = f"{BENCH_DATABASE_PREFIX}{uuid.uuid4().hex[:8]}"
    url = make_url(server_url)
    admin = url.set(database="postgres").render_as_string(hide_password=False)
    database_url = url.set(database=name).render_as_string(hide_password=False)
    asyncio.run(_drop_leftover_databases(admin))
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        upgrade(settings.migrations_dir, database_url)
        yield database_url, redis_url
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def connect(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(database_url))


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def wait_ready(url: str, timeout: float = 30) -> None:
    """Until `url` answers 200 (a server the benchmark started), or exit saying so."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"server at {url} did not become ready")


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of an API or worker process a benchmark starts: the bench database,
    quiet logs, rate limits out of reach."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_PER_TENANT": "100000000/minute",
        "RATE_LIMIT_PER_SUBJECT": "100000000/minute",
        **extra,
    }


def start_cli(name: str, arguments: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`agent-platform ARGUMENTS` in a process of its own; stderr in /tmp/bench-NAME.log."""
    with open(f"/tmp/bench-{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *arguments],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

"""The embedded daemons: started once, shared, outliving the process that started them,
and recovered from a stale pid file after a crash (kill -9)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from app.embedded import EmbeddedPostgres, EmbeddedRedis
from app.runtime.store import asyncpg_dsn


def _kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


async def _pg_answers(url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await connection.fetchval("SELECT 1"))
    finally:
        await connection.close()


async def _redis_answers(url: str) -> bool:
    client = Redis.from_url(url, socket_timeout=2)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


@pytest.mark.skipif(os.environ.get("DATABASE_URL") is not None, reason="external PostgreSQL")
def test_postgres_daemon_survives_its_starter_and_recovers_from_kill_9(tmp_path: Path) -> None:
    # Started by a child process that then exits: the server must outlive it.
    code = (
        "from pathlib import Path; from app.embedded import EmbeddedPostgres;"
        f"print(EmbeddedPostgres(Path({str(tmp_path)!r}), start_timeout_seconds=120)"
        ".ensure_running())"
    )
    started = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, started.stderr[-3000:]
    url = started.stdout.strip().splitlines()[-1]
    postgres = EmbeddedPostgres(tmp_path)
    try:
        status = postgres.status()
        assert status.running and status.pid is not None
        assert asyncio.run(_pg_answers(url)) == 1
        assert postgres.ensure_running() == url  # attaching starts nothing new
        assert postgres.status().pid == status.pid

        _kill_and_wait(status.pid)  # a crash leaves postmaster.pid behind
        assert (postgres.pgdata / "postmaster.pid").exists()
        assert not postgres.status().running
        recovered = postgres.ensure_running()
        assert asyncio.run(_pg_answers(recovered)) == 1
        assert postgres.status().pid != status.pid
    finally:
        postgres.stop()
    assert not postgres.status().running


def test_redis_daemon_recovers_from_a_stale_pid_file(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path)
    url = redis.ensure_running()
    try:
        pid = redis.status().pid
        assert pid is not None and asyncio.run(_redis_answers(url))
        _kill_and_wait(pid)
        assert redis.pid_file.exists() and not redis.status().running
        assert asyncio.run(_redis_answers(redis.ensure_running()))
        assert redis.status().pid != pid
    finally:
        redis.stop()

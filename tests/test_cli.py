"""The command line as a user runs it: `token` mints a token the API accepts; `serve` and
`worker` refuse a database that is behind (naming the command to run); `services status`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, TEST_JWT_SECRET, bearer


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            "AUTH_JWT_SECRET": TEST_JWT_SECRET,
            "ENVIRONMENT": "test",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_token_command_mints_a_token_the_api_accepts(
    client: httpx.AsyncClient, tenant: str
) -> None:
    result = _cli(
        "token", "--tenant", tenant, "--sub", "carol", "--roles", "client,reviewer", "--ttl", "120"
    )
    assert result.returncode == 0, result.stderr
    response = await client.get("/v1/me", headers=bearer(result.stdout.strip()))
    assert response.status_code == 200
    assert response.json() == {"sub": "carol", "tenant": tenant, "roles": ["client", "reviewer"]}


def test_token_command_refuses_unknown_roles() -> None:
    result = _cli("token", "--tenant", "t", "--sub", "s", "--roles", "root")
    assert result.returncode == 2 and "unknown roles" in result.stderr


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
def test_serve_and_worker_refuse_a_database_that_is_behind(
    command: list[str], empty_database_url: str, redis_url: str
) -> None:
    result = _cli(*command, env={"DATABASE_URL": empty_database_url, "REDIS_URL": redis_url})
    assert result.returncode == 2
    assert "agent-platform migrate" in result.stderr and "--migrate" in result.stderr


def test_migrate_command_brings_an_empty_database_to_head(empty_database_url: str) -> None:
    result = _cli("migrate", env={"DATABASE_URL": empty_database_url})
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout
    revision = result.stdout.split("revision ")[1].split(" ")[0]
    assert f"(head {revision})" in result.stdout


def test_services_status_reports_the_embedded_daemons() -> None:
    if os.environ.get("DATABASE_URL") or os.environ.get("REDIS_URL"):
        pytest.skip("external services configured")
    result = _cli("services", "status", "--json")
    assert result.returncode == 0, result.stderr
    import json

    statuses = {s["name"]: s for s in json.loads(result.stdout.split("\nnote:")[0])}
    assert statuses["postgres"]["running"] and statuses["redis"]["running"]
    assert statuses["postgres"]["port"] and statuses["postgres"]["socket"].endswith(
        str(statuses["postgres"]["port"])
    )


def test_worker_starts_on_a_fresh_database_and_loads_the_yaml_agents(
    empty_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    assert _cli("migrate", env={"DATABASE_URL": empty_database_url}).returncode == 0
    env = {
        **os.environ, "AUTH_JWT_SECRET": TEST_JWT_SECRET, "ENVIRONMENT": "test", "LOG_JSON": "false",
        "DATABASE_URL": empty_database_url, "REDIS_URL": redis_url,
    }  # fmt: skip
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", "2"],
            cwd=PROJECT_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "started (concurrency 2)" not in log.read_text() and time.monotonic() < deadline:
                assert worker.poll() is None, log.read_text()[-3000:]
                time.sleep(0.1)
            assert "loaded agents" in log.read_text() and "support v1" in log.read_text()
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0

"""Worker processes for crash tests: real `agent-platform worker` processes on the test
database, killed with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PROJECT_ROOT, TEST_JWT_SECRET


class WorkerProcess:
    def __init__(
        self,
        database_url: str,
        redis_url: str,
        log_path: Path,
        *,
        concurrency: int = 4,
        lease_seconds: float = 2.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        env = {
            **os.environ,
            "ENVIRONMENT": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "AUTH_JWT_SECRET": TEST_JWT_SECRET,
            "LOG_JSON": "false",
            "RUNTIME_LEASE_TTL_SECONDS": str(lease_seconds),
            "RUNTIME_HEARTBEAT_INTERVAL_SECONDS": str(lease_seconds / 4),
            "RUNTIME_REAPER_INTERVAL_SECONDS": "0.5",
            "RUNTIME_POLL_INTERVAL_SECONDS": "0.5",
            "RUNTIME_SHUTDOWN_GRACE_SECONDS": "5",
            **(extra_env or {}),
        }
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(concurrency)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


def wait_until(predicate: object, timeout: float = 20, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class ServeProcess:
    """`agent-platform serve --workers N` on a free-ish port, on the test database."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        log_path: Path,
        *,
        workers: int = 2,
        processes: int = 1,
        port: int | None = None,
    ) -> None:
        self.port = port or 18000 + (os.getpid() * 7 + int(time.time() * 1000)) % 2000
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, "ENVIRONMENT": "test", "AUTH_JWT_SECRET": TEST_JWT_SECRET,
            "DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_JSON": "false",
        }  # fmt: skip
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers),
             "--processes", str(processes)],
            cwd=PROJECT_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{self.base_url}/readyz", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"serve never became ready:\n{self.log_path.read_text()[-2000:]}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._log.close()
        return code

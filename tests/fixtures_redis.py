"""A Valkey server of a test's own, for tests that stop, stall or restart Redis."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.embedded import EmbeddedRedis


class DedicatedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.server = EmbeddedRedis(data_dir, start_timeout_seconds=10)
        self.url = self.server.ensure_running()

    @property
    def pid(self) -> int:
        pid = self.server.status().pid
        assert pid is not None
        return pid

    def stop(self) -> None:
        assert self.server.stop()

    def start(self) -> None:
        self.url = self.server.ensure_running()

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections but never answers (a stalled Redis)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[DedicatedRedis]:
    redis = DedicatedRedis(tmp_path)
    yield redis
    status = redis.server.status()
    if status.pid is not None:
        os.kill(status.pid, signal.SIGCONT)
    redis.server.stop()

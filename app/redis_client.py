"""The process's Redis client, under short socket timeouts, and a failure latch.

Every Redis use declares a fallback. `RedisHealth` lets callers skip Redis for a short
while after it failed, so a dead or stalled Redis costs one timeout, not one per request.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from app.settings import RedisSettings


def create_redis(settings: RedisSettings, url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.connect_timeout_seconds,
        health_check_interval=0,
        retry_on_timeout=False,
        decode_responses=False,
    )


class RedisHealth:
    """Remembers a recent Redis failure for `cooldown_seconds`."""

    def __init__(self, cooldown_seconds: float) -> None:
        self.cooldown_seconds = cooldown_seconds
        self._failed_at: float | None = None

    @property
    def available(self) -> bool:
        if self._failed_at is None:
            return True
        return time.monotonic() - self._failed_at >= self.cooldown_seconds

    def record_failure(self) -> None:
        self._failed_at = time.monotonic()

    def record_success(self) -> None:
        self._failed_at = None

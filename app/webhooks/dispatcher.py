"""Delivers the webhook outbox (run by every worker process).

Due rows are taken with `FOR UPDATE SKIP LOCKED` and their next attempt pushed out by a
visibility timeout (a dispatcher that dies mid-delivery leaves the row to be retried, not
lost), delivered signed (Standard Webhooks), and then marked `delivered`, rescheduled with
exponential back-off and jitter, or `dead` after `WEBHOOK_MAX_ATTEMPTS`. Every attempt is
appended to the row's `attempt_log`. The URL passes the outbound-address guard again at
delivery (DNS rebinding) and the request goes to exactly the checked address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from app.settings import WebhookSettings
from app.tools import outbound
from app.tools.http import post_to_checked_target
from app.webhooks import signing

logger = logging.getLogger(__name__)

_TAKE_DUE = """
WITH due AS (
    SELECT o.delivery_id FROM webhook_outbox o
    WHERE o.status = 'pending' AND o.next_attempt_at <= now()
    ORDER BY o.next_attempt_at LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_outbox o SET next_attempt_at = now() + make_interval(secs => $2)
FROM due WHERE o.delivery_id = due.delivery_id
RETURNING o.delivery_id, o.tenant_id, o.url, o.payload::text AS payload, o.attempts
"""

_SECRET = """
UPDATE tenants SET webhook_secret = COALESCE(webhook_secret, $2)
WHERE tenant_id = $1 RETURNING webhook_secret
"""

_RECORD = """
UPDATE webhook_outbox SET
    attempts = attempts + 1,
    status = $2::text,
    next_attempt_at = now() + make_interval(secs => $3),
    last_error = $4,
    last_status_code = $5,
    delivered_at = CASE WHEN $2::text = 'delivered' THEN now() ELSE delivered_at END,
    attempt_log = attempt_log || jsonb_build_array($6::jsonb)
WHERE delivery_id = $1
"""


def backoff_seconds(settings: WebhookSettings, attempts: int) -> float:
    """Exponential back-off, capped, with ±20 % jitter (so retries do not stampede)."""
    delay = min(
        settings.backoff_base_seconds * 2 ** max(attempts - 1, 0), settings.backoff_max_seconds
    )
    return float(delay) * random.uniform(0.8, 1.2)


class WebhookDispatcher:
    def __init__(
        self, settings: WebhookSettings, allowlist: list[str], batch_size: int = 20
    ) -> None:
        self.settings = settings
        self.allowlist = allowlist
        self.batch_size = batch_size

    async def run(self, pool: asyncpg.Pool) -> None:
        async with httpx.AsyncClient(
            timeout=self.settings.timeout_seconds, follow_redirects=False, trust_env=False
        ) as client:
            while True:
                try:
                    delivered = await self.dispatch_once(pool, client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("webhook dispatch failed: %r", exc)
                    delivered = 0
                if not delivered:
                    await asyncio.sleep(self.settings.dispatch_interval_seconds)

    async def dispatch_once(self, pool: asyncpg.Pool, client: httpx.AsyncClient) -> int:
        visibility = self.settings.timeout_seconds * 3
        rows = await pool.fetch(_TAKE_DUE, self.batch_size, visibility)
        await asyncio.gather(*(self._deliver(pool, client, row) for row in rows))
        return len(rows)

    async def _deliver(
        self, pool: asyncpg.Pool, client: httpx.AsyncClient, row: asyncpg.Record
    ) -> None:
        secret = await pool.fetchval(_SECRET, row["tenant_id"], signing.new_secret())
        body = row["payload"].encode()
        timestamp = int(time.time())
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            target = await outbound.resolve_and_check(row["url"], self.allowlist)
            headers = {
                **signing.headers(secret, row["delivery_id"], timestamp, body),
                "Host": target.host_header,
                "User-Agent": "agent-platform-webhooks/1",
            }
            status_code, response_body = await post_to_checked_target(
                client, "webhook", target, body, headers
            )
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}: {response_body[:200].decode(errors='replace')}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {getattr(exc, 'detail', None) or exc}"
        attempts = row["attempts"] + 1
        entry: dict[str, Any] = {
            "attempt": attempts,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "status_code": status_code,
            "error": error,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if error is None:
            status, delay = "delivered", 0.0
        elif attempts >= self.settings.max_attempts:
            status, delay = "dead", 0.0
            logger.warning(
                "webhook %s dead after %d attempts: %s", row["delivery_id"], attempts, error
            )
        else:
            status, delay = "pending", backoff_seconds(self.settings, attempts)
        await pool.execute(
            _RECORD, row["delivery_id"], status, delay, error, status_code, json.dumps(entry)
        )

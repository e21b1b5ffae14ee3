"""Retention: finished sessions are erased in the background by age (TTL) and by count
(keep the newest N per tenant), per tenant or by the defaults in settings — on the same
rules as the erase endpoint: only finished sessions, and never one that a running or
waiting child session still belongs to. Erasure cascades to events, tool calls,
approvals, memories and webhook deliveries."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from app.settings import RetentionSettings

logger = logging.getLogger(__name__)

_PURGE = """
WITH limits AS (
    SELECT tenant_id,
           COALESCE(retention_days, $1::float8) AS days,
           COALESCE(retention_keep_last, $2::int) AS keep_last
    FROM tenants
), ranked AS (
    SELECT s.session_id, s.finished_at, l.days, l.keep_last,
           row_number() OVER (PARTITION BY s.tenant_id ORDER BY s.finished_at DESC, s.session_id DESC) AS newest
    FROM sessions s JOIN limits l ON l.tenant_id = s.tenant_id
    WHERE s.status IN ('completed', 'failed', 'cancelled', 'timed_out')
      AND (l.days IS NOT NULL OR l.keep_last IS NOT NULL)
), doomed AS (
    SELECT r.session_id FROM ranked r
    WHERE ((r.days IS NOT NULL AND r.finished_at < now() - make_interval(secs => r.days * 86400))
           OR (r.keep_last IS NOT NULL AND r.newest > r.keep_last))
      AND NOT EXISTS (
          SELECT 1 FROM sessions c
          WHERE c.parent_id = r.session_id
            AND c.status NOT IN ('completed', 'failed', 'cancelled', 'timed_out'))
    LIMIT $3
), keys AS (
    DELETE FROM idempotency_keys k USING doomed d WHERE k.resource_id = d.session_id
)
DELETE FROM sessions s USING doomed d
WHERE s.session_id = d.session_id
  AND s.status IN ('completed', 'failed', 'cancelled', 'timed_out')
RETURNING s.session_id
"""


async def purge_once(pool: asyncpg.Pool, settings: RetentionSettings) -> int:
    """Erase up to `batch_size` sessions past their retention; returns how many."""
    if settings.finished_days is None and settings.keep_last is None:
        configured = await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tenants"
            " WHERE retention_days IS NOT NULL OR retention_keep_last IS NOT NULL)"
        )
        if not configured:
            return 0  # nothing to enforce: skip the scan
    rows = await pool.fetch(_PURGE, settings.finished_days, settings.keep_last, settings.batch_size)
    if rows:
        logger.info("retention erased %d finished sessions", len(rows))
    return len(rows)


async def run(pool: asyncpg.Pool, settings: RetentionSettings) -> None:
    while True:
        try:
            erased = await purge_once(pool, settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("retention pass failed: %r", exc)
            erased = 0
        if erased < settings.batch_size:
            await asyncio.sleep(settings.interval_seconds)

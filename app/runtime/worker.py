"""The worker pool: N async slots claiming sessions from the sessions table.

- Claims with `FOR UPDATE SKIP LOCKED` (app.sessions.transitions.claim), as many as it has
  free slots, fairly across tenants and within their running caps.
- Wake-ups are pushed: a LISTEN connection hears `agent_sessions` (a session was queued)
  and `agent_cancel`; polling every `poll_interval_seconds` is only the safety net.
- Heartbeats renew every held lease in one statement; a lease not renewed is lost, and that
  run stops without writing (its writes would be fenced out anyway).
- The reaper re-queues sessions whose lease expired (a crashed or stalled worker's).
- Graceful shutdown: stop claiming; runs release their session at the next safe point
  (after the step in flight); what is left after the grace period is released by the lease
  expiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.credentials.service import CredentialCipher
from app.hitl.expiry import expire_due, next_expiry_at
from app.hitl.service import APPROVALS_CHANNEL
from app.llm.pricing import PriceTable
from app.llm.providers import ModelResolver
from app.runtime.claim import Claimed, Lease, RunDeps
from app.runtime.faults import CrashPoints
from app.runtime.loop import SessionRun
from app.runtime.store import RuntimeStore, asyncpg_dsn, create_pool
from app.sessions import retention, transitions
from app.sessions.events import NOTIFY_CHANNEL
from app.sessions.feed import DeltaForwarder, SessionNews
from app.settings import RetentionSettings, RuntimeSettings
from app.tools.registry import ToolRegistry
from app.webhooks.dispatcher import WebhookDispatcher

logger = logging.getLogger(__name__)
CANCEL_CHANNEL = "agent_cancel"
# Expiry of approval requests is applied within this long of their deadline, at worst.
APPROVAL_EXPIRY_MAX_SLEEP = 5.0


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _connection: event.set()


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class WorkerPool:
    def __init__(
        self,
        settings: RuntimeSettings,
        database_url: str,
        *,
        concurrency: int,
        session_factory: async_sessionmaker[AsyncSession],
        models: ModelResolver | None = None,
        tools: ToolRegistry | None = None,
        worker_id: str | None = None,
        redis_url: str | None = None,
        redis_timeout_seconds: float = 0.25,
        webhooks: WebhookDispatcher | None = None,
        retention: RetentionSettings | None = None,
        prices: PriceTable | None = None,
        credential_cipher: CredentialCipher | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        self.database_url = database_url
        self.concurrency = concurrency
        self.session_factory = session_factory
        self.models = models or ModelResolver()
        self.tools = tools or ToolRegistry()
        self.worker_id = worker_id or default_worker_id()
        self.runs: dict[str, tuple[SessionRun, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        # Whether a claim may find work: set by news of queued sessions (NOTIFY, requeues),
        # a full batch and the polling safety net; a slot freed alone does not set it, so a
        # worker that just finished a session does not ask an empty queue again.
        self._maybe_queued = True
        self._last_claim_at = 0.0
        self._approval_requested = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        # Claims, heartbeats and the reaper get connections of their own: behind a thousand
        # sessions queueing for the step pool, a late heartbeat would lose every lease.
        self._control_pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self.claimed_total = 0
        self.webhooks = webhooks
        self.retention = retention
        self.prices = prices or PriceTable()
        self.credential_cipher = credential_cipher
        # Followers of a session (SSE, long-polls) hear of new events through Redis.
        self._redis = (
            None
            if redis_url is None
            else Redis.from_url(
                redis_url,
                socket_timeout=redis_timeout_seconds,
                socket_connect_timeout=redis_timeout_seconds,
            )
        )
        self._redis_timeout_seconds = redis_timeout_seconds
        self._news = (
            None if self._redis is None else SessionNews(self._redis, redis_timeout_seconds)
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down gracefully."""
        self._pool = await create_pool(self.database_url, max_size=min(self.concurrency + 4, 64))
        self._control_pool = await create_pool(self.database_url, max_size=2)
        store = RuntimeStore(self._pool, announce=self._announce)
        deps = RunDeps(
            store=store,
            models=self.models,
            tools=self.tools,
            session_factory=self.session_factory,
            crash_points=CrashPoints(self.settings),
            prices=self.prices,
            deltas=None if self._redis is None else self._delta_forwarder,
            redis=self._redis,
            credential_cipher=self.credential_cipher,
        )
        background = [
            asyncio.create_task(self._listen(), name="worker-listen"),
            asyncio.create_task(self._heartbeat(store), name="worker-heartbeat"),
            asyncio.create_task(self._reap(), name="worker-reaper"),
            asyncio.create_task(self._expire_approvals(), name="worker-approval-expiry"),
        ]
        if self.webhooks is not None:
            background.append(
                asyncio.create_task(self.webhooks.run(self._pool), name="worker-webhooks")
            )
        if self.retention is not None:
            background.append(
                asyncio.create_task(
                    retention.run(self._pool, self.retention), name="worker-retention"
                )
            )
        logger.info("worker %s started (concurrency %d)", self.worker_id, self.concurrency)
        try:
            await self._claim_loop(deps, stop)
        finally:
            await self._shutdown(background)

    async def _claim_loop(self, deps: RunDeps, stop: asyncio.Event) -> None:
        assert self._pool is not None
        stop_waiter = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                # Clear before claiming: a wake-up that arrives while we claim is kept.
                self._wake.clear()
                if time.monotonic() - self._last_claim_at >= self.settings.poll_interval_seconds:
                    self._maybe_queued = True  # the safety net: news can be lost
                free = self.concurrency - len(self.runs)
                claimed = 0
                if free > 0 and self._maybe_queued:
                    self._maybe_queued = False
                    self._last_claim_at = time.monotonic()
                    claimed = await self._claim(deps, free)
                    if claimed:
                        # a full batch may have left more behind; a partial one may have
                        # been cut short by other workers' locks: look again
                        self._maybe_queued = True
                        if claimed < free:
                            continue
                wake = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {wake, stop_waiter},
                    timeout=self.settings.poll_interval_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                wake.cancel()
        finally:
            stop_waiter.cancel()

    async def _claim(self, deps: RunDeps, free: int) -> int:
        assert self._control_pool is not None
        try:
            async with self._control_pool.acquire() as connection:
                rows = await transitions.claim(
                    connection, self.worker_id, self.settings.lease_ttl_seconds, free
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning("claim failed: %r; retrying", exc)
            await asyncio.sleep(0.5)
            self._maybe_queued = True
            return 0
        expires_at = time.monotonic() + self.settings.lease_ttl_seconds
        for row in rows:
            claimed = Claimed.from_row(row)
            run = SessionRun(claimed, Lease(claimed.session_id, claimed.epoch, expires_at), deps)
            task = asyncio.create_task(run.run(), name=f"session-{claimed.session_id}")
            self.runs[claimed.session_id] = (run, task)
            task.add_done_callback(self._finished_callback(claimed.session_id))
            self._announce(claimed.session_id)  # its `session.running` event
        self.claimed_total += len(rows)
        return len(rows)

    def _delta_forwarder(self, session_id: str) -> DeltaForwarder:
        assert self._redis is not None
        return DeltaForwarder(self._redis, session_id, self._redis_timeout_seconds)

    def _announce(self, session_id: str) -> None:
        """Publish that the session has new events, without waiting for it (best effort)."""
        if self._news is not None:
            self._news.announce(session_id)

    def _finished_callback(self, session_id: str) -> Callable[[asyncio.Task[None]], None]:
        def finished(_task: asyncio.Task[None]) -> None:
            self.runs.pop(session_id, None)
            self._wake.set()  # a slot is free: claim if work was queued meanwhile

        return finished

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        self._stopping.set()
        for run, _ in self.runs.values():
            run.request_drain()
        tasks = [task for _, task in self.runs.values()]
        if tasks:
            logger.info(
                "draining %d sessions (grace %.0fs)",
                len(tasks),
                self.settings.shutdown_grace_seconds,
            )
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds)
            for task in pending:
                task.cancel()  # their leases expire and the reaper hands them on
            await asyncio.gather(*pending, return_exceptions=True)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
        for pool in (self._pool, self._control_pool):
            if pool is not None:
                await pool.close()
        if self._news is not None:
            await self._news.flush()
        if self._redis is not None:
            await self._redis.aclose()
        logger.info("worker %s stopped", self.worker_id)

    # -- background duties -------------------------------------------------------------------

    def _queued_news(self) -> None:
        """Sessions were queued: claim as soon as a slot is free."""
        self._maybe_queued = True
        self._wake.set()

    def _on_notify(self, _connection: object, _pid: int, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            entry = self.runs.get(payload)
            if entry is not None:
                entry[0].request_cancel()
        elif payload.endswith(":queued"):
            self._queued_news()

    async def _listen(self) -> None:
        """Hold a LISTEN connection; reconnect if it drops (polling covers the gap)."""
        while not self._stopping.is_set():
            try:
                closed = asyncio.Event()
                self._listener = await asyncpg.connect(asyncpg_dsn(self.database_url))
                self._listener.add_termination_listener(_setter(closed))
                await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
                await self._listener.add_listener(CANCEL_CHANNEL, self._on_notify)
                await self._listener.add_listener(APPROVALS_CHANNEL, self._on_approval_request)
                self._queued_news()  # we may have missed some while disconnected
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("listen connection failed: %r", exc)
            await asyncio.sleep(1.0)

    async def _heartbeat(self, store: RuntimeStore) -> None:
        interval = self.settings.heartbeat_interval_seconds
        while True:
            await asyncio.sleep(interval)
            leases = {
                sid: run.lease.epoch for sid, (run, _) in self.runs.items() if not run.lease.lost
            }
            if not leases:
                continue
            sent_at = time.monotonic()
            try:
                assert self._control_pool is not None
                held = await store.heartbeat(
                    self.worker_id, leases, self.settings.lease_ttl_seconds, pool=self._control_pool
                )
            except Exception as exc:
                logger.warning("heartbeat failed: %r", exc)
                continue
            for session_id in leases:
                entry = self.runs.get(session_id)
                if entry is None:
                    continue
                run = entry[0]
                if session_id not in held:
                    # Finished meanwhile, or our lease is gone: only the latter matters, and
                    # the run's fenced writes will find out; mark it so no side effect starts.
                    run.lease.lost = True
                    continue
                run.lease.expires_at = sent_at + self.settings.lease_ttl_seconds
                if held[session_id]:
                    run.request_cancel()

    def _on_approval_request(self, *_args: object) -> None:
        self._approval_requested.set()

    async def _expire_approvals(self) -> None:
        """Apply the gate's timeout policy to approval requests past their deadline, close
        to the deadline: sleep until the soonest one (at most APPROVAL_EXPIRY_MAX_SLEEP; a
        new request wakes us early). Every worker does it; the update is conditional."""
        assert self._control_pool is not None
        while True:
            sleep = APPROVAL_EXPIRY_MAX_SLEEP
            try:
                async with self._control_pool.acquire() as connection:
                    requeued = await expire_due(connection)
                    soonest = await next_expiry_at(connection)
                if requeued:
                    logger.info("approval requests expired; re-queued %d sessions", len(requeued))
                    self._queued_news()
                if soonest is not None:
                    until = (soonest - datetime.now(UTC)).total_seconds()
                    sleep = min(max(until, 0.1), APPROVAL_EXPIRY_MAX_SLEEP)
            except Exception as exc:
                logger.warning("approval expiry failed: %r", exc)
            self._approval_requested.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._approval_requested.wait(), sleep)

    async def _reap(self) -> None:
        assert self._control_pool is not None
        interval = self.settings.reaper_interval_seconds
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                async with self._control_pool.acquire() as connection:
                    requeued = await transitions.requeue_expired(connection)
            except Exception as exc:
                logger.warning("reaper failed: %r", exc)
                continue
            if requeued:
                logger.warning("re-queued %d sessions whose lease expired", len(requeued))
                self._queued_news()

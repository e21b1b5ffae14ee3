"""Live session events for followers: one hub per API process.

Workers publish a session's id on the Redis channel `agent:session-events` after each
committed write (`publish_session_news`). The hub of each API process subscribes once; for
a session somebody follows it reads the new events from the database *once* and hands them
to every follower in the process, so two hundred followers of one session cost one query
per event, and nobody polls in a loop.

Declared behaviour without Redis (down or stalled): the hub checks the database for the
sessions being followed every `fallback_poll_seconds`, so events arrive late but none is
lost; a safety-net check every `safety_poll_seconds` also covers a publish lost to a worker
crash between its commit and its publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.observability import metrics
from app.sessions.models import SessionEvent

logger = logging.getLogger(__name__)
NEWS_CHANNEL = "agent:session-events"
# Transient text deltas of a model answer as it is written (not stored one by one: the
# stored event is the complete message). Followers get them as `delta` events without an id.
DELTA_CHANNEL = "agent:session-deltas"


async def publish_session_news(redis: Redis, session_id: str, timeout_seconds: float) -> None:
    """Best effort: followers also find events through the hub's safety-net check. A
    message is one session id or several, separated by spaces (`SessionNews`)."""
    try:
        async with asyncio.timeout(timeout_seconds):
            await redis.publish(NEWS_CHANNEL, session_id)
    except Exception as exc:
        metrics.REDIS_FALLBACKS.labels(feature="session_news").inc()
        logger.debug("could not publish session news: %r", exc)


class SessionNews:
    """A worker's news publisher: sessions announced while a publish is in flight go out
    together in the next message, so a busy worker sends a message per batch, not per
    committed step (an idle one still publishes each at once). Best effort."""

    def __init__(self, redis: Redis, timeout_seconds: float) -> None:
        self.redis = redis
        self.timeout_seconds = timeout_seconds
        self._pending: dict[str, None] = {}  # ordered set
        self._sender: asyncio.Task[None] | None = None

    def announce(self, session_id: str) -> None:
        self._pending[session_id] = None
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while self._pending:
            batch, self._pending = " ".join(self._pending), {}
            await publish_session_news(self.redis, batch, self.timeout_seconds)

    async def flush(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)


class DeltaForwarder:
    """Publishes one session's text deltas on DELTA_CHANNEL, in order, from one task
    (deltas that arrive while a publish is in flight go out together). Best effort."""

    def __init__(self, redis: Redis, session_id: str, timeout_seconds: float) -> None:
        self.redis = redis
        self.session_id = session_id
        self.timeout_seconds = timeout_seconds
        self._buffer: list[tuple[int, str]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._sent = 0

    def push(self, index: int, text: str) -> None:
        self._buffer.append((index, text))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"deltas-{self.session_id}")

    async def close(self) -> None:
        """Send what is buffered, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._buffer = self._buffer, []
            for index, text in _merged(batch):
                self._sent += 1
                message = json.dumps(
                    {"session_id": self.session_id, "index": index, "text": text, "n": self._sent}
                )
                try:
                    async with asyncio.timeout(self.timeout_seconds):
                        await self.redis.publish(DELTA_CHANNEL, message)
                except Exception as exc:
                    metrics.REDIS_FALLBACKS.labels(feature="session_deltas").inc()
                    logger.debug("could not publish a delta: %r", exc)
            if self._closing and not self._buffer:
                return


def _merged(batch: list[tuple[int, str]]) -> list[tuple[int, str]]:
    merged: list[tuple[int, str]] = []
    for index, text in batch:
        if merged and merged[-1][0] == index:
            merged[-1] = (index, merged[-1][1] + text)
        else:
            merged.append((index, text))
    return merged


@dataclass(frozen=True)
class FeedEvent:
    seq: int  # the event's id: it numbers the session's events in commit order
    type: str
    data: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: SessionEvent) -> FeedEvent:
        return cls(row.seq, row.type, row.data, row.created_at)

    @property
    def transient(self) -> bool:
        """A live-only event (a text delta): no id, never stored, not replayed."""
        return self.seq == 0


@dataclass
class _Feed:
    last_seq: int
    followers: set[asyncio.Queue[FeedEvent]] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SessionFeedHub:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        redis_url: str,
        *,
        connect_timeout_seconds: float = 0.5,
        fallback_poll_seconds: float = 1.0,
        safety_poll_seconds: float = 5.0,
    ) -> None:
        self.session_factory = session_factory
        # Its own connection: a subscriber blocks on reads, which the request client's
        # short socket timeout would turn into errors.
        self.redis = Redis.from_url(
            redis_url, socket_connect_timeout=connect_timeout_seconds, health_check_interval=10
        )
        self.fallback_poll_seconds = fallback_poll_seconds
        self.safety_poll_seconds = safety_poll_seconds
        self._feeds: dict[str, _Feed] = {}
        self._redis_ok = False
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()

    def _ensure_started(self) -> None:
        if not self._tasks:
            self._start()

    def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="feed-listen"),
            asyncio.create_task(self._safety_net(), name="feed-safety-net"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    # -- following ------------------------------------------------------------------------

    async def backlog(self, session_id: str, after_seq: int, limit: int = 1000) -> list[FeedEvent]:
        async with self.session_factory() as db:
            rows = await db.execute(
                select(SessionEvent)
                .where(SessionEvent.session_id == session_id, SessionEvent.seq > after_seq)
                .order_by(SessionEvent.seq)
                .limit(limit)
            )
            return [FeedEvent.of(row) for row in rows.scalars()]

    @contextlib.asynccontextmanager
    async def follow(self, session_id: str) -> AsyncIterator[asyncio.Queue[FeedEvent]]:
        """A queue that receives every event of the session committed from now on."""
        self._ensure_started()
        feed = self._feeds.get(session_id)
        if feed is None:
            async with self.session_factory() as db:
                last = await db.scalar(
                    select(func.coalesce(func.max(SessionEvent.seq), 0)).where(
                        SessionEvent.session_id == session_id
                    )
                )
            feed = self._feeds.setdefault(session_id, _Feed(last_seq=int(last or 0)))
        queue: asyncio.Queue[FeedEvent] = asyncio.Queue()
        feed.followers.add(queue)
        try:
            yield queue
        finally:
            feed.followers.discard(queue)
            if not feed.followers and self._feeds.get(session_id) is feed:
                del self._feeds[session_id]

    def announce(self, session_id: str, timeout_seconds: float = 0.25) -> None:
        """After a commit in this process: tell local followers at once and the other
        processes through Redis (fire and forget)."""
        for coroutine in (
            self.news(session_id),
            publish_session_news(self.redis, session_id, timeout_seconds),
        ):
            task = asyncio.create_task(coroutine)
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def news(self, session_id: str) -> None:
        """Fetch the session's new events once and hand them to its followers here."""
        feed = self._feeds.get(session_id)
        if feed is None:
            return
        async with feed.lock:
            events = await self.backlog(session_id, feed.last_seq)
            for event in events:
                feed.last_seq = max(feed.last_seq, event.seq)
                for queue in feed.followers:
                    queue.put_nowait(event)

    def _hand_out_delta(self, raw: bytes) -> None:
        delta = json.loads(raw)
        feed = self._feeds.get(delta.pop("session_id", ""))
        if feed is None:
            return
        event = FeedEvent(0, "delta", delta, datetime.now(UTC))
        for queue in feed.followers:
            queue.put_nowait(event)

    # -- news sources -----------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(NEWS_CHANNEL, DELTA_CHANNEL)
                self._redis_ok = True
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["channel"] == DELTA_CHANNEL.encode():
                        self._hand_out_delta(message["data"])
                        continue
                    for session_id in message["data"].decode().split():
                        if session_id in self._feeds:
                            await self.news(session_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._redis_ok:
                    logger.warning(
                        "session news: Redis unavailable, checking the database instead: %r", exc
                    )
                self._redis_ok = False
                metrics.REDIS_FALLBACKS.labels(feature="session_news").inc()
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _safety_net(self) -> None:
        while True:
            await asyncio.sleep(
                self.safety_poll_seconds if self._redis_ok else self.fallback_poll_seconds
            )
            for session_id in list(self._feeds):
                try:
                    await self.news(session_id)
                except Exception as exc:
                    logger.warning("session feed check failed: %r", exc)

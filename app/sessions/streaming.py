"""Following a session: the SSE stream (backlog from `Last-Event-ID`, then the live tail,
heartbeats, ends after the terminal event) and the long-poll of `?wait_seconds=`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from app.sessions.feed import FeedEvent, SessionFeedHub
from app.sessions.states import SessionStatus

TERMINAL_EVENTS = frozenset(
    f"session.{status.value}" for status in SessionStatus if status.is_terminal
)
SETTLED_EVENTS = TERMINAL_EVENTS | {
    f"session.{status.value}" for status in SessionStatus if status.is_waiting
}


def sse_frame(event: FeedEvent) -> bytes:
    data = {
        "id": event.seq,
        "seq": event.seq,
        "type": event.type,
        "data": event.data,
        "created_at": event.created_at.isoformat(),
    }
    payload = json.dumps(data, separators=(",", ":"), default=str)
    if event.transient:  # no id: a resumed stream never asks for it again
        return f"event: {event.type}\ndata: {payload}\n\n".encode()
    return f"id: {event.seq}\nevent: {event.type}\ndata: {payload}\n\n".encode()


async def stream_events(
    hub: SessionFeedHub,
    session_id: str,
    *,
    after_seq: int,
    session_finished: bool,
    heartbeat_seconds: float,
) -> AsyncIterator[bytes]:
    """Every event after `after_seq`, in order, exactly once; then the live ones; the
    stream ends after the terminal event."""
    yield b"retry: 2000\n\n"
    last_sent = after_seq
    async with hub.follow(session_id) as live:
        # Joined the live feed first, then read the backlog: nothing can fall in between.
        while True:
            backlog = await hub.backlog(session_id, last_sent)
            for event in backlog:
                last_sent = event.seq
                yield sse_frame(event)
                if event.type in TERMINAL_EVENTS:
                    return
            if len(backlog) < 1000:
                break
        if session_finished:
            return  # resumed after the end: the missed events, then done
        while True:
            try:
                event = await asyncio.wait_for(live.get(), heartbeat_seconds)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event.transient:
                yield sse_frame(event)
                continue
            if event.seq <= last_sent:
                continue  # already sent from the backlog
            last_sent = event.seq
            yield sse_frame(event)
            if event.type in TERMINAL_EVENTS:
                return


async def wait_for_settled(
    hub: SessionFeedHub,
    session_id: str,
    wait_seconds: float,
    is_settled: Callable[[], Awaitable[bool]],
) -> None:
    """Return as soon as the session finishes or waits on a reviewer or input, or after
    `wait_seconds` — whichever comes first. The caller then reads the session."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    async with hub.follow(session_id) as live:
        if await is_settled():  # checked after joining the feed: no settling slips by
            return
        while (remaining := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(live.get(), remaining)
            except TimeoutError:
                return
            if event.type in SETTLED_EVENTS:
                return

"""Following a session live: SSE with lossless resume, many followers, heartbeats; and the
long-poll of GET /v1/sessions/{id}?wait_seconds=N."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import httpx

from app.api.auth import mint_token
from app.llm.function_model import FunctionModel
from app.llm.model import ModelRequest, ModelResponse
from app.llm.providers import ModelResolver
from app.main import create_app
from app.settings import ApiSettings
from tests.conftest import PROJECT_ROOT, client_for, make_settings
from tests.runtime.processes import ServeProcess
from tests.runtime_fixtures import Api, PoolFactory, call, script

TERMINAL = {"session.completed", "session.failed", "session.cancelled", "session.timed_out"}


async def _read_sse(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], *, stop_after: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of an SSE stream (and its comment lines), until it ends or `stop_after`."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    async with http.stream(
        "GET", url, headers={**headers, "Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line == "":
                if "data" in frame:
                    event = json.loads(frame["data"])
                    assert str(event["id"]) == frame["id"] and event["type"] == frame["event"]
                    events.append(event)
                    if stop_after is not None and len(events) >= stop_after:
                        break
                frame = {}
            else:
                key, _, value = line.partition(": ")
                frame[key] = value
    return events, comments


def _slow_agent() -> dict[str, Any]:
    return {
        "tools": ["lookup_order"],
        **script(
            {"tool_use": [call("lookup_order", order_id="ord_1001")], "delay_ms": 150},
            {"tool_use": [call("lookup_order", order_id="ord_1002")], "delay_ms": 150},
            {"text": "done", "delay_ms": 150},
        ),
    }


async def test_a_live_follower_sees_every_event_in_order_and_the_stream_ends(
    api: Api, start_pool: PoolFactory
) -> None:
    await api.create_agent(name="slow", **_slow_agent())
    session = await api.start("slow", "go")
    reader = asyncio.create_task(
        _read_sse(api.http, f"/v1/sessions/{session['id']}/events", api.headers)
    )
    await asyncio.sleep(0.2)
    await start_pool()
    events, _ = await asyncio.wait_for(reader, 30)
    stored = await api.events(session["id"])
    assert [e["id"] for e in events] == [e["id"] for e in stored]
    assert events[-1]["type"] == "session.completed"
    assert [e["type"] for e in events].count("model.response") == 3


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(
    api: Api, start_pool: PoolFactory
) -> None:
    await api.create_agent(name="slow", **_slow_agent())
    session = await api.start("slow", "go")
    url = f"/v1/sessions/{session['id']}/events"
    await start_pool()
    first, _ = await _read_sse(api.http, url, api.headers, stop_after=3)  # then disconnect
    second, _ = await _read_sse(
        api.http, url, {**api.headers, "Last-Event-ID": str(first[-1]["id"])}
    )
    stored = await api.events(session["id"])
    assert [e["id"] for e in first + second] == [e["id"] for e in stored]  # no loss, no duplicate
    # Resuming a finished session: the missed events, then the stream ends at once.
    late, _ = await asyncio.wait_for(
        _read_sse(api.http, url, {**api.headers, "Last-Event-ID": str(stored[1]["id"])}), 5
    )
    assert [e["id"] for e in late] == [e["id"] for e in stored[2:]]


async def test_two_hundred_followers_all_receive_every_event(
    api: Api, start_pool: PoolFactory
) -> None:
    await api.create_agent(name="slow", **_slow_agent())
    session = await api.start("slow", "go")
    url = f"/v1/sessions/{session['id']}/events"
    readers = [asyncio.create_task(_read_sse(api.http, url, api.headers)) for _ in range(200)]
    await asyncio.sleep(1.0)
    await start_pool()
    results = await asyncio.wait_for(asyncio.gather(*readers), 60)
    expected = [e["id"] for e in await api.events(session["id"])]
    assert all([e["id"] for e in events] == expected for events, _ in results)


async def test_idle_streams_get_heartbeats(context_factory: Any, api: Api) -> None:
    settings = make_settings(api=ApiSettings(sse_heartbeat_seconds=0.2))
    app = create_app(settings, context=context_factory(settings))
    await api.create_agent(name="quiet", **script({"text": "x"}))
    session = await api.start("quiet", "nobody runs me")
    async with client_for(app) as http:
        comments: list[str] = []

        async def read() -> None:
            nonlocal comments
            _, comments = await _read_sse(http, f"/v1/sessions/{session['id']}/events", api.headers)

        task = asyncio.create_task(read())
        await asyncio.sleep(1.0)
        cancel = await http.post(f"/v1/sessions/{session['id']}/cancel", headers=api.headers)
        assert cancel.status_code == 202
        await asyncio.wait_for(task, 10)  # the cancel's event ends the stream
    assert sum(c.startswith(": keep-alive") for c in comments) >= 3


async def test_long_poll_returns_soon_after_the_session_finishes(
    api: Api, start_pool: PoolFactory
) -> None:
    await api.create_agent(name="slow", **_slow_agent())
    session = await api.start("slow", "go")
    await start_pool()
    started = time.monotonic()
    response = await api.http.get(
        f"/v1/sessions/{session['id']}", params={"wait_seconds": 20}, headers=api.headers
    )
    waited = time.monotonic() - started
    assert response.status_code == 200 and response.json()["status"] == "completed"
    finished = response.json()["finished_at"]
    assert waited < 5
    events = await api.events(session["id"])
    assert events[-1]["type"] == "session.completed" and finished


async def test_long_poll_with_nothing_to_wait_for_returns_after_n_seconds(api: Api) -> None:
    await api.create_agent(name="quiet", **script({"text": "x"}))
    session = await api.start("quiet", "nobody runs me")
    started = time.monotonic()
    response = await api.http.get(
        f"/v1/sessions/{session['id']}", params={"wait_seconds": 1}, headers=api.headers
    )
    assert 0.9 <= time.monotonic() - started < 3
    assert response.json()["status"] == "queued"
    too_long = await api.http.get(
        f"/v1/sessions/{session['id']}", params={"wait_seconds": 61}, headers=api.headers
    )
    assert too_long.status_code == 422


async def test_cli_follower_prints_readable_progress(
    database_url: str, redis_url: str, tenant: str, tmp_path: Any
) -> None:
    server = ServeProcess(database_url, redis_url, tmp_path / "serve.log", workers=2)
    try:
        await asyncio.to_thread(server.wait_ready)
        token = mint_token(
            make_settings().auth, tenant=tenant, sub="u", roles=["client"], ttl_seconds=600
        )
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            created = await http.post(
                "/v1/sessions",
                json={"agent": "support", "input": {"order_id": "ord_1005", "amount": 3}},
                headers={"Authorization": f"Bearer {token}"},
            )
        follower = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "app.cli", "sessions", "follow", created.json()["id"], "--url", server.base_url],
            cwd=PROJECT_ROOT, env={**server.env, "AGENT_PLATFORM_TOKEN": token}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        await asyncio.to_thread(server.stop)
    assert follower.returncode == 0, follower.stdout + follower.stderr
    lines = follower.stdout.splitlines()
    assert lines[0].startswith("[") and "→ lookup_order" in follower.stdout
    assert "← refund_order succeeded" in follower.stdout
    assert "model: Refunded 3 USD for order ord_1005." in follower.stdout
    assert lines[-1] == "[completed]"


async def test_a_waiter_returns_within_100_ms_of_the_session_finishing(
    api: Api, start_pool: PoolFactory
) -> None:
    gates: list[asyncio.Event] = []

    async def gated(_request: ModelRequest) -> ModelResponse:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        return ModelResponse(content=[{"type": "text", "text": "done"}], stop_reason="end_turn")

    models = ModelResolver()
    models.register("gated", FunctionModel(gated))
    await api.create_agent(name="gated", model="gated")
    await start_pool(models=models)
    lags = []
    for _ in range(5):
        session = await api.start("gated", "go")
        await api.wait(session["id"], until=("running",))
        waiter = asyncio.create_task(
            api.http.get(
                f"/v1/sessions/{session['id']}", params={"wait_seconds": 10}, headers=api.headers
            )
        )
        await asyncio.sleep(0.2)
        released = time.monotonic()
        gates[-1].set()
        response = await waiter
        lags.append(time.monotonic() - released)
        assert response.json()["status"] == "completed"
    lags.sort()
    # Median of five: the model answers, the run completes, the waiter has its answer.
    assert lags[2] < 0.1, lags


async def test_a_busy_worker_batches_its_session_news_and_followers_hear_every_session(
    redis_url: str,
) -> None:
    """SessionNews: ids announced while a publish is in flight go out together (one
    message, space-separated); every announced session reaches a subscriber."""
    from redis.asyncio import Redis

    from app.sessions.feed import NEWS_CHANNEL, SessionNews

    redis = Redis.from_url(redis_url)
    subscriber = redis.pubsub(ignore_subscribe_messages=True)
    await subscriber.subscribe(NEWS_CHANNEL)
    news = SessionNews(redis, timeout_seconds=1.0)
    try:
        prefix = f"ses_batch_{time.monotonic_ns()}_"
        ids = [f"{prefix}{i}" for i in range(50)]
        for session_id in ids:  # no await in between: all but the first wait for a publish
            news.announce(session_id)
        await news.flush()
        heard: list[str] = []
        messages = 0
        deadline = time.monotonic() + 5
        while set(heard) != set(ids) and time.monotonic() < deadline:
            message = await subscriber.get_message(timeout=1.0)
            mine = [] if message is None else message["data"].decode().split()
            mine = [session_id for session_id in mine if session_id.startswith(prefix)]
            if mine:  # (other tests may publish on the channel meanwhile)
                messages += 1
                heard.extend(mine)
        assert sorted(heard) == sorted(ids)
        assert messages < len(ids)  # batched, not one message per announcement
    finally:
        await subscriber.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()

"""The LLM gateway end to end: the real anthropic SDK → the fake Anthropic server over HTTP,
the circuit breaker, cache and budgets on the real Valkey, sessions on the real database."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.llm.budget import TenantBudgetExceeded
from app.llm.fake_anthropic import FakeAnthropicServer
from app.llm.fake_anthropic.script import Fail, Reply, ToolUse
from app.llm.gateway import ProviderGateway
from app.llm.model import ModelCallFailed, ModelRequest
from app.llm.providers import ModelResolver, build_gateway
from app.settings import AnthropicSettings, LlmSettings, RedisSettings, Settings
from tests.conftest import make_settings
from tests.runtime_fixtures import Api, PoolFactory

PRIMARY = "claude-sonnet-4-5"
FALLBACK = "claude-haiku-4-5"


def gateway_settings(fake: FakeAnthropicServer, **llm: Any) -> Settings:
    values: dict[str, Any] = {
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "breaker_cooldown_seconds": 60,
        # Every test gets circuits of its own (the breaker's keys are per model).
        **llm,
    }
    return make_settings(
        anthropic=AnthropicSettings(api_key=fake.api_key, base_url=fake.base_url),
        llm=LlmSettings(**values),
        # These tests are not about a slow Redis: on a busy 2-core machine one breaker call
        # once took longer than the 0.25 s default, and its circuit fell back per-process.
        redis=RedisSettings(socket_timeout_seconds=2, connect_timeout_seconds=2),
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def model_names() -> tuple[str, str]:
    """Model names of this test's own, so circuits and cache entries never leak between
    tests (the fake answers any model name; prices fall back to the sonnet entry)."""
    suffix = uuid.uuid4().hex[:6]
    return f"{PRIMARY}-{suffix}", f"{FALLBACK}-{suffix}"


def request(model: str, tenant: str = "t-gw", **extra: Any) -> ModelRequest:
    values: dict[str, Any] = {
        "system": "You are terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "tools": [],
        "max_tokens": 256,
        **extra,
    }
    return ModelRequest(model=model, tenant_id=tenant, **values)


@pytest.fixture
async def make_gateway(fake_anthropic: FakeAnthropicServer, redis: Redis) -> AsyncIterator[Any]:
    made: list[ProviderGateway] = []

    def make(**llm: Any) -> ProviderGateway:
        gateway = build_gateway(gateway_settings(fake_anthropic, **llm), redis)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.aclose()


async def test_the_sdk_speaks_bearer_auth_and_its_api_version_and_streams(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, _ = model_names
    fake_anthropic.script(Reply(content=["Hi there."]))
    response = await make_gateway().complete(request(primary))
    assert response.text == "Hi there." and response.stop_reason == "end_turn"
    assert response.ttft_ms is not None
    [sent] = fake_anthropic.requests
    assert sent.headers["authorization"] == f"Bearer {fake_anthropic.api_key}"
    assert sent.headers["anthropic-version"] == "2026-10-21"
    assert sent.streamed and sent.body["max_tokens"] == 256
    assert sent.headers.get("x-stainless-retry-count", "0") == "0"


async def test_429_with_retry_after_is_waited_as_told_then_succeeds(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, _ = model_names
    fake_anthropic.script(Fail(429, retry_after=0.6), Reply(content=["after the wait"]))
    started = time.monotonic()
    response = await make_gateway().complete(request(primary))
    elapsed = time.monotonic() - started
    assert response.text == "after the wait"
    assert len(fake_anthropic.requests) == 2
    assert elapsed >= 0.6, f"retried after {elapsed:.3f}s, before retry-after"


async def test_retry_after_ms_wins_over_the_backoff(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, _ = model_names
    fake_anthropic.script(Fail(529, retry_after_ms=300), Reply(content=["ok"]))
    started = time.monotonic()
    await make_gateway(retry_base_seconds=5, retry_max_seconds=5).complete(request(primary))
    assert 0.3 <= time.monotonic() - started < 3  # not the 5 s back-off


async def test_529_on_the_primary_falls_back_to_the_next_model(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, fallback = model_names
    fake_anthropic.script_always(Fail(529), model=primary)
    fake_anthropic.script(Reply(content=["from the fallback"]), model=fallback)
    response = await make_gateway(max_retries=1).complete(
        request(primary, fallback_models=(fallback,))
    )
    assert response.text == "from the fallback" and response.model == fallback
    models = [r.model for r in fake_anthropic.requests]
    assert models == [primary, primary, fallback]  # one retry, then the chain moves on


async def test_a_400_is_not_retried_and_not_failed_over(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, fallback = model_names
    fake_anthropic.script(Fail(400))
    with pytest.raises(ModelCallFailed) as raised:
        await make_gateway().complete(request(primary, fallback_models=(fallback,)))
    assert not raised.value.transient and raised.value.code == "model_request_rejected"
    assert len(fake_anthropic.requests) == 1


async def test_the_circuit_opens_after_n_failures_and_then_fails_fast_without_a_request(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, fallback = model_names
    fake_anthropic.script_always(Fail(500), model=primary)
    fake_anthropic.script_always(Reply(content=["fallback"]), model=fallback)
    gateway = make_gateway(max_retries=0, breaker_failure_threshold=3)
    for _ in range(3):
        await gateway.complete(request(primary, fallback_models=(fallback,)))
    assert [r.model for r in fake_anthropic.requests].count(primary) == 3
    # A second gateway (another worker process shares the same Redis state) sees it open.
    other = make_gateway(max_retries=0, breaker_failure_threshold=3)
    response = await other.complete(request(primary, fallback_models=(fallback,)))
    assert response.model == fallback
    assert [r.model for r in fake_anthropic.requests].count(primary) == 3  # no new request
    with pytest.raises(ModelCallFailed) as raised:
        await other.complete(request(primary))
    assert raised.value.transient and "circuit open" in str(raised.value)


async def test_429s_do_not_open_the_circuit(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, _ = model_names
    fake_anthropic.script_always(Fail(429, retry_after=0), model=primary)
    gateway = make_gateway(max_retries=0, breaker_failure_threshold=2)
    for _ in range(4):
        with pytest.raises(ModelCallFailed):
            await gateway.complete(request(primary))
    assert len(fake_anthropic.requests) == 4  # every call still went out


async def test_a_cache_hit_makes_no_request_and_costs_nothing(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, model_names: tuple[str, str]
) -> None:
    primary, _ = model_names
    fake_anthropic.script(Reply(content=["cached answer"]))
    gateway = make_gateway()
    cacheable = request(primary, cache_responses=True)
    first = await gateway.complete(cacheable)
    second = await gateway.complete(cacheable)
    assert not first.cached and second.cached
    assert second.text == "cached answer" and second.usage.total == 0
    assert len(fake_anthropic.requests) == 1
    # Another tenant, or another prompt, never shares the entry.
    fake_anthropic.script(Reply(content=["tenant b"]), Reply(content=["other prompt"]))
    other_tenant = await gateway.complete(request(primary, tenant="t-other", cache_responses=True))
    other_prompt = await gateway.complete(request(primary, cache_responses=True, max_tokens=257))
    assert (other_tenant.text, other_prompt.text) == ("tenant b", "other prompt")
    assert len(fake_anthropic.requests) == 3


async def test_prompt_caching_marks_system_and_tools_and_reads_show_in_usage(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any
) -> None:
    gateway = make_gateway()
    tools = [
        {
            "name": "lookup_order",
            "description": "Look an order up. " * 200,
            "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        }
    ]
    cached = request(PRIMARY, prompt_caching=True, tools=tools, system="Policy text. " * 400)
    fake_anthropic.script(Reply(content=["one"]), Reply(content=["two"]))
    first = await gateway.complete(cached)
    second = await gateway.complete(cached)
    body = fake_anthropic.requests[0].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first.usage.cache_creation_input_tokens > 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert gateway.prices.cache_savings(PRIMARY, second.usage) > 0
    assert gateway.prices.cost(PRIMARY, second.usage) < gateway.prices.cost(PRIMARY, first.usage)


async def test_concurrent_calls_of_one_tenant_never_exceed_its_budget_by_more_than_one_reservation(
    fake_anthropic: FakeAnthropicServer, make_gateway: Any, redis: Redis
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    fake_anthropic.script_always(Reply(content=["x" * 400], usage={"output_tokens": 100}))
    budget = 3_000
    gateway = make_gateway(tenant_daily_token_budget=budget)
    one = request(PRIMARY, tenant=tenant)
    outcomes = await asyncio.gather(
        *(gateway.complete(one) for _ in range(40)), return_exceptions=True
    )
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, TenantBudgetExceeded)]
    assert answered and refused and len(answered) + len(refused) == 40
    used, _ = await gateway.budgets.used(tenant)
    reservation = 256 + 50  # max_tokens + a generous input estimate
    assert used <= budget + reservation
    assert len(fake_anthropic.requests) == len(answered)  # refused calls never went out


# -- through the runtime ---------------------------------------------------------------


@pytest.fixture
def gateway_models(make_gateway: Any) -> ModelResolver:
    return ModelResolver(make_gateway())


async def _read_stream(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[Any]:
    """(event type, data, arrival time) for every SSE frame, until the stream ends."""
    frames: list[Any] = []
    async with http.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}) as r:
        frame: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line == "":
                if "data" in frame:
                    frames.append((frame["event"], json.loads(frame["data"]), time.monotonic()))
                frame = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                frame[key] = value
    return frames


async def test_streamed_deltas_reach_a_follower_before_the_message_completes(
    api: Api,
    start_pool: PoolFactory,
    fake_anthropic: FakeAnthropicServer,
    gateway_models: ModelResolver,
) -> None:
    words = [f"word{i} " for i in range(12)]
    fake_anthropic.script(Reply(content=["".join(words)], event_delay_seconds=0.05))
    await api.create_agent(name="streamer", model=PRIMARY)
    await start_pool(2, models=gateway_models)
    session = await api.start("streamer", "tell me")
    frames = await _read_stream(api.http, f"/v1/sessions/{session['id']}/events", api.headers)
    deltas = [(data, at) for kind, data, at in frames if kind == "delta"]
    [(_, turn, turn_at)] = [f for f in frames if f[0] == "model.response"]
    assert len(deltas) >= 2, frames
    assert deltas[0][1] < turn_at  # text arrived before the complete message was stored
    assert "".join(d["data"]["text"] for d, _ in deltas) == "".join(words)
    stored = turn["data"]["content"]
    assert stored == [{"type": "text", "text": "".join(words)}]
    events = await api.events(session["id"])
    assert "delta" not in {e["type"] for e in events}  # transient: never stored


async def test_max_tokens_with_a_cut_off_tool_call_is_never_executed(
    api: Api,
    start_pool: PoolFactory,
    fake_anthropic: FakeAnthropicServer,
    gateway_models: ModelResolver,
) -> None:
    fake_anthropic.script(
        Reply(
            content=[ToolUse("lookup_order", cut_off_json='{"order_id": "ord_10')],
            stop_reason="max_tokens",
        ),
        Reply(content=["Sorry, I ran out of room."]),
    )
    await api.create_agent(
        name="cutoff", model=PRIMARY, tools=["lookup_order"], limits={"max_tokens": 100}
    )
    await start_pool(2, models=gateway_models)
    session = await api.start("cutoff", "look up ord_1001")
    done = await api.wait(session["id"])
    assert done["status"] == "completed", done
    assert await api.tool_calls(session["id"]) == []
    assert [r.body["max_tokens"] for r in fake_anthropic.requests] == [100, 200]


async def test_budget_exhaustion_ends_the_session_with_its_code_and_no_further_call(
    api: Api,
    start_pool: PoolFactory,
    fake_anthropic: FakeAnthropicServer,
    gateway_models: ModelResolver,
) -> None:
    fake_anthropic.script_always(
        Reply(
            content=[ToolUse("lookup_order", {"order_id": "ord_1001"})],
            usage={"input_tokens": 900, "output_tokens": 200},
        )
    )
    await api.create_agent(
        name="budgeted",
        model=PRIMARY,
        tools=["lookup_order"],
        limits={"max_tokens_total": 1200, "max_tokens": 100},
    )
    await start_pool(2, models=gateway_models)
    session = await api.start("budgeted", "go")
    done = await api.wait(session["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "token_budget_exceeded"
    assert len(fake_anthropic.requests) == 1  # the second call would not fit: never made
    assert done["usage"]["input_tokens"] == 900 and done["usage"]["output_tokens"] == 200
    assert Decimal(str(done["usage"]["cost_usd"])) == Decimal("0.0057")  # 900·3 + 200·15 per M
    # Per call (the stored event), and summed per agent and tenant.
    [turn] = [e for e in await api.events(session["id"]) if e["type"] == "model.response"]
    assert Decimal(turn["data"]["cost_usd"]) == Decimal("0.0057")
    report = (await api.http.get("/v1/usage", headers=api.headers)).json()
    [agent] = [a for a in report["agents"] if a["agent"] == "budgeted"]
    assert Decimal(str(agent["cost_usd"])) == Decimal("0.0057") and agent["input_tokens"] == 900
    assert Decimal(str(report["tenant"]["cost_usd"])) >= Decimal("0.0057")


async def test_an_overloaded_provider_parks_the_session_with_a_back_off_not_a_failure(
    api: Api,
    start_pool: PoolFactory,
    fake_anthropic: FakeAnthropicServer,
    gateway_models: ModelResolver,
) -> None:
    fake_anthropic.script(Fail(529), Fail(529), Fail(529), Fail(529))
    await api.create_agent(name="overloaded", model=PRIMARY)
    await start_pool(2, models=gateway_models)
    session = await api.start("overloaded", "hi")
    for _ in range(200):
        events = await api.events(session["id"])
        noted = any(e["data"].get("kind") == "model_backoff" for e in events)
        if noted and events[-1]["type"] == "session.queued":
            break
        await asyncio.sleep(0.05)
    current = await api.get(session["id"])
    assert current["status"] == "queued", current  # handed back, not failed
    assert len(fake_anthropic.requests) == 4  # the first try and three retries


async def test_an_overgrown_conversation_is_compacted_by_the_cheaper_tier_and_goes_on(
    api: Api,
    start_pool: PoolFactory,
    fake_anthropic: FakeAnthropicServer,
    gateway_models: ModelResolver,
) -> None:
    fake_anthropic.script(
        Reply(content=[ToolUse("lookup_order", {"order_id": "ord_1001"})]),
        Reply(content=["partial"], stop_reason="model_context_window_exceeded"),
        Reply(content=["All done."]),
        model=PRIMARY,
    )
    fake_anthropic.script(
        Reply(content=["User asked about ord_1001; it was found."]), model=FALLBACK
    )
    await api.create_agent(name="compacting", model=PRIMARY, tools=["lookup_order"])
    await start_pool(2, models=gateway_models)
    session = await api.start("compacting", "where is ord_1001?")
    done = await api.wait(session["id"])
    assert done["status"] == "completed", done
    models = [r.model for r in fake_anthropic.requests]
    assert models == [PRIMARY, PRIMARY, FALLBACK, PRIMARY]  # the summary went to the cheap tier
    last = fake_anthropic.requests[-1].body["messages"]
    assert "User asked about ord_1001" in last[0]["content"][0]["text"]
    assert last[1]["role"] == "assistant" and last[2]["content"][0]["type"] == "tool_result"
    notes = [e["data"] for e in await api.events(session["id"]) if e["type"] == "platform.note"]
    assert [n["kind"] for n in notes] == ["compaction"]

"""The fake Anthropic API, driven by the real SDK (`anthropic.AsyncAnthropic`) over HTTP on a
real loopback port: answers, stop reasons, streaming, errors, validation, usage, auth."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.llm.fake_anthropic import (
    Disconnect,
    Fail,
    FakeAnthropic,
    FakeAnthropicServer,
    RecordedRequest,
    Reply,
    ToolUse,
)
from app.llm.fake_anthropic.render import render, stream_events
from app.llm.fake_anthropic.usage import InputUsage
from tests.llm.fake_server import sdk_client

# The fixtures (fake_anthropic, fake_anthropic_server) until tests/conftest.py registers them.
pytest_plugins = ["tests.llm.fake_server"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-test-1"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="session")
async def sdk(
    fake_anthropic_server: FakeAnthropicServer,
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """One SDK client for the run: building one costs ~0.1 s (the SDK's own set-up)."""
    client = sdk_client(fake_anthropic_server)
    yield client
    await client.close()


@pytest.fixture(autouse=True)
def _leave_no_queued_sessions() -> None:
    """Overrides the suite-wide runtime clean-up: these tests start no sessions, so they
    need no database (and skip its per-test set-up)."""


@pytest.fixture(scope="session")
async def http(fake_anthropic_server: FakeAnthropicServer) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client for what the SDK cannot send (other auth styles, raw bodies)."""
    async with httpx.AsyncClient(base_url=fake_anthropic_server.base_url) as client:
        yield client


async def create(client: anthropic.AsyncAnthropic, **params: Any) -> anthropic.types.Message:
    values: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": USER}
    values.update(params)
    return await client.messages.create(**values)


async def test_plain_message(fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic):
    fake_anthropic.script(Reply(["It is sunny in Paris."]))

    message = await create(sdk)

    assert message.id.startswith("msg_01")
    assert message.model == MODEL
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "text", "text": "It is sunny in Paris."}
    ]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == 6  # 21 characters, ~4 a token
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    [request] = fake_anthropic.requests
    assert message._request_id == request.request_id and request.request_id.startswith("req_")
    assert request.headers["authorization"] == f"Bearer {fake_anthropic.api_key}"
    assert request.headers["anthropic-version"] == "2026-10-21"
    assert (request.model, request.streamed, request.status) == (MODEL, False, 200)
    assert request.messages == USER


async def test_default_answer_echoes_the_user(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    message = await create(sdk, tools=[WEATHER_TOOL])

    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Fake answer to: What is the weather in Paris?"


async def test_tool_use_round_trip(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(
        Reply(["Let me check.", ToolUse("get_weather", {"city": "Paris"})]),
        Reply(["Sunny, 24°C."]),
    )

    first = await create(sdk, tools=[WEATHER_TOOL])
    assert first.stop_reason == "tool_use"
    call = first.content[1]
    assert call.type == "tool_use" and call.id.startswith("toolu_01")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})

    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 24"}
    history = [*USER, first.to_param(), {"role": "user", "content": [result]}]
    second = await create(sdk, tools=[WEATHER_TOOL], messages=history)

    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == "Sunny, 24°C."
    sent = fake_anthropic.requests[1].messages
    assert sent[1]["content"][1]["id"] == call.id
    assert sent[2]["content"][0]["tool_use_id"] == call.id


@pytest.mark.parametrize(
    "stop_reason",
    [
        "end_turn",
        "tool_use",
        "max_tokens",
        "stop_sequence",
        "pause_turn",
        "refusal",
        "model_context_window_exceeded",
    ],
)
async def test_each_stop_reason(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic, stop_reason: Any
):
    fake_anthropic.script(Reply(["Partial answer"], stop_reason=stop_reason))

    message = await create(sdk, stop_sequences=["STOP"])

    assert message.stop_reason == stop_reason
    assert message.stop_sequence == ("STOP" if stop_reason == "stop_sequence" else None)
    if stop_reason == "refusal":
        assert message.stop_details is not None and message.stop_details.type == "refusal"
    else:
        assert message.stop_details is None


async def test_max_tokens_cuts_long_content(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(Reply(["word " * 100]))

    message = await create(sdk, max_tokens=5)

    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text" and message.content[0].text == ("word " * 4)
    assert message.usage.output_tokens == 5


async def test_cut_off_tool_call_streamed_and_not(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    cut = ToolUse("get_weather", cut_off_json='{"city": "Paris", "days": 1')
    fake_anthropic.script(Reply([cut]), Reply([cut]))

    message = await create(sdk, tools=[WEATHER_TOOL])
    async with sdk.messages.stream(
        model=MODEL, max_tokens=256, messages=USER, tools=[WEATHER_TOOL]
    ) as stream:
        streamed = await stream.get_final_message()

    for answer in (message, streamed):
        assert answer.stop_reason == "max_tokens"
        assert answer.content[0].type == "tool_use"
        assert answer.content[0].input == {"city": "Paris", "days": 1}


async def test_stream_text_arrives_before_the_message_completes(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    text = "The quick brown fox jumps over the lazy dog, twice over, and then rests."
    fake_anthropic.script(Reply([text], event_delay_seconds=0.02))

    arrivals: list[tuple[float, str]] = []
    async with sdk.messages.stream(model=MODEL, max_tokens=256, messages=USER) as stream:
        async for delta in stream.text_stream:
            arrivals.append((time.monotonic(), delta))
        final = await stream.get_final_message()
        request_id = stream.request_id
    finished = time.monotonic()

    assert len(arrivals) > 2
    assert "".join(delta for _, delta in arrivals) == text
    assert finished - arrivals[0][0] >= 0.06  # the first text came several events before the end
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == (len(text) + 3) // 4
    assert final.usage.input_tokens > 0
    [request] = fake_anthropic.requests
    assert request.streamed and request_id == request.request_id


async def test_stream_event_order_on_the_wire(
    fake_anthropic: FakeAnthropicServer, http: httpx.AsyncClient
):
    fake_anthropic.script(
        Reply(["Checking the weather now.", ToolUse("get_weather", {"city": "Oslo"})])
    )

    response = await http.post(
        "/v1/messages",
        headers={"x-api-key": fake_anthropic.api_key, "anthropic-version": "2023-06-01"},
        json={
            "model": MODEL,
            "max_tokens": 256,
            "messages": USER,
            "tools": [WEATHER_TOOL],
            "stream": True,
        },
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1][6:]))
        for block in response.text.strip().split("\n\n")
    ]
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    first_stop = names.index("content_block_stop")
    assert set(names[3:first_stop]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] > 1
    tool_json = "".join(
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["index"] == 1
    )
    assert json.loads(tool_json) == {"city": "Oslo"}


async def test_input_json_deltas_assemble_into_the_tool_input(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    tool_input = {"city": "San Francisco", "days": 7, "units": "metric", "hourly": True}
    fake_anthropic.script(Reply([ToolUse("get_weather", tool_input)]))

    snapshots: list[object] = []
    async with sdk.messages.stream(
        model=MODEL, max_tokens=256, messages=USER, tools=[WEATHER_TOOL]
    ) as stream:
        async for event in stream:
            if event.type == "input_json":
                snapshots.append(event.snapshot)
        final = await stream.get_final_message()

    assert len(snapshots) > 3  # several partial_json chunks, each a growing snapshot
    assert snapshots[-1] == tool_input
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == tool_input


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.ContentTooLargeError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_scripted_errors_map_to_sdk_exceptions(
    fake_anthropic: FakeAnthropicServer,
    sdk: anthropic.AsyncAnthropic,
    status: int,
    exception: type[anthropic.APIStatusError],
    error_type: str,
):
    fake_anthropic.script(Fail(status))

    with pytest.raises(exception) as caught:
        await create(sdk)

    assert caught.value.status_code == status
    assert caught.value.type == error_type
    assert caught.value.request_id == fake_anthropic.requests[0].request_id
    assert caught.value.body == {
        "type": "error",
        "error": {"type": error_type, "message": caught.value.api_message},
        "request_id": caught.value.request_id,
    }


async def test_rate_limit_carries_retry_after(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(Fail(429, retry_after=3, retry_after_ms=2500))

    with pytest.raises(anthropic.RateLimitError) as caught:
        async with sdk.messages.stream(model=MODEL, max_tokens=256, messages=USER):
            pass

    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["retry-after-ms"] == "2500"


async def test_overload_is_an_internal_server_error(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(Fail(529))

    with pytest.raises(anthropic.InternalServerError) as caught:
        await create(sdk)

    assert isinstance(caught.value, anthropic.OverloadedError)


async def test_script_per_model(fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic):
    fake_anthropic.script_always(Fail(529), model="claude-busy")
    fake_anthropic.script(Reply(["from the shared queue"]))

    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            await create(sdk, model="claude-busy")
    answer = await create(sdk, model="claude-free")
    fallback = await create(sdk, model="claude-free")

    assert answer.content[0].type == "text" and answer.content[0].text == "from the shared queue"
    assert fallback.content[0].type == "text" and fallback.content[0].text.startswith("Fake answer")
    assert [request.model for request in fake_anthropic.requests] == [
        "claude-busy",
        "claude-busy",
        "claude-free",
        "claude-free",
    ]


async def test_a_callable_entry_answers_from_the_request(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    def echo_model(request: RecordedRequest) -> Reply:
        return Reply([f"model={request.model} messages={len(request.messages)}"])

    fake_anthropic.script(echo_model)

    message = await create(sdk)

    assert message.content[0].type == "text"
    assert message.content[0].text == f"model={MODEL} messages=1"


async def test_mid_stream_error_event_raises(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(Reply(["one two three four five six seven eight"], error_after_deltas=1))

    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with sdk.messages.stream(model=MODEL, max_tokens=256, messages=USER) as stream:
            async for delta in stream.text_stream:
                received.append(delta)

    assert len(received) == 1
    # The HTTP status was 200 when the error arrived: the SDK raises the base class with
    # the error's type from the event body.
    assert caught.value.status_code == 200
    assert caught.value.type == "overloaded_error"
    assert caught.value.request_id == fake_anthropic.requests[0].request_id


async def test_dropped_stream_raises_a_transport_error(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(Reply(["one two three four five six seven eight"], drop_after_events=4))

    received: list[str] = []
    # The SDK does not wrap errors raised while reading a stream: a cut connection
    # surfaces as the transport's own error.
    with pytest.raises(httpx2.RemoteProtocolError):
        async with sdk.messages.stream(model=MODEL, max_tokens=256, messages=USER) as stream:
            async for delta in stream.text_stream:
                received.append(delta)

    assert received  # the cut came mid-stream, after some text


async def test_disconnect_before_the_body_is_a_connection_error(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(Disconnect())

    with pytest.raises(anthropic.APIConnectionError):
        await create(sdk)


async def test_scripted_delay_lets_a_client_time_out(fake_anthropic: FakeAnthropicServer):
    fake_anthropic.script(Reply(["late"], delay_seconds=0.5))
    client = sdk_client(fake_anthropic, timeout=0.1)
    try:
        with pytest.raises(anthropic.APITimeoutError):
            await create(client)
    finally:
        await client.close()


async def test_unanswered_tool_use_is_rejected(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script(Reply(["never sent"]))
    call = {"type": "tool_use", "id": "toolu_01abc", "name": "get_weather", "input": {}}
    history = [
        *USER,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": "and tomorrow?"},
    ]

    with pytest.raises(anthropic.BadRequestError) as caught:
        await create(sdk, tools=[WEATHER_TOOL], messages=history)

    assert caught.value.type == "invalid_request_error"
    assert caught.value.api_message == (
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_01abc. Each `tool_use` block must have a corresponding `tool_result` block in "
        "the next message."
    )
    assert fake_anthropic.pending() == 1  # a rejected request does not use up the script


async def test_mismatched_tool_use_id_is_rejected(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    call = {"type": "tool_use", "id": "toolu_01abc", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_01xyz", "content": "sunny"}
    history = [
        *USER,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]

    with pytest.raises(anthropic.BadRequestError) as caught:
        await create(sdk, tools=[WEATHER_TOOL], messages=history)

    assert caught.value.api_message is not None
    assert caught.value.api_message.startswith(
        "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_01xyz."
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": -1}, "max_tokens: Input should be greater than or equal to 0"),
        ({"model": None}, "model: Field required"),
        ({"messages": []}, "messages: at least one message is required"),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            'messages: first message must use the "user" role',
        ),
        (
            {"messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        ),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content: Input should be"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages: text content blocks must"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0: Input tag 'video' found",
        ),
        ({"tools": [{"name": "x"}]}, "tools.0.custom.input_schema: Field required"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools: Tool names must be unique."),
        ({"temperature": 1.5}, "temperature: Input should be a number between 0 and 1"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        (
            {"tool_choice": {"type": "any"}},
            "tool_choice: `tool_choice` may only be specified while providing tools",
        ),
    ],
)
async def test_malformed_requests_are_rejected(
    fake_anthropic: FakeAnthropicServer,
    http: httpx.AsyncClient,
    change: dict[str, Any],
    message: str,
):
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": USER}
    body.update(change)
    body = {name: value for name, value in body.items() if value is not None}

    response = await http.post(
        "/v1/messages",
        headers={"x-api-key": fake_anthropic.api_key, "anthropic-version": "2023-06-01"},
        json=body,
    )

    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"].startswith(message)
    assert payload["request_id"] == response.headers["request-id"]


async def test_consecutive_turns_of_one_role_are_merged(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    call = {"type": "tool_use", "id": "toolu_01abc", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_01abc", "content": "sunny"}
    history = [
        *USER,
        {"role": "user", "content": "Please be brief."},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
        {"role": "user", "content": "Thanks."},
    ]

    message = await create(sdk, tools=[WEATHER_TOOL], messages=history)

    assert message.stop_reason == "end_turn"


async def test_count_tokens_matches_message_usage(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    params: dict[str, Any] = {"model": MODEL, "messages": USER, "tools": [WEATHER_TOOL]}

    counted = await sdk.messages.count_tokens(**params)
    message = await sdk.messages.create(max_tokens=256, **params)

    assert counted.input_tokens > 0
    assert counted.input_tokens == message.usage.input_tokens
    assert fake_anthropic.requests[0].path == "/v1/messages/count_tokens"


async def test_prompt_cache_creation_then_reads(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    system = [
        {
            "type": "text",
            "text": "You are a weather assistant. " * 20,
            "cache_control": {"type": "ephemeral"},
        }
    ]

    first = await create(sdk, system=system, tools=[WEATHER_TOOL])
    second = await create(sdk, system=system, tools=[WEATHER_TOOL])
    other_model = await create(sdk, system=system, tools=[WEATHER_TOOL], model="claude-other")
    counted = await sdk.messages.count_tokens(
        model=MODEL, system=system, tools=[WEATHER_TOOL], messages=USER
    )

    created = first.usage.cache_creation_input_tokens
    assert created is not None and created > 100
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == created
    assert second.usage.input_tokens == first.usage.input_tokens > 0  # the uncached tail
    assert other_model.usage.cache_creation_input_tokens == created  # caches are per model
    assert counted.input_tokens == first.usage.input_tokens + created


async def test_both_auth_header_styles(
    fake_anthropic: FakeAnthropicServer, http: httpx.AsyncClient
):
    body = {"model": MODEL, "max_tokens": 64, "messages": USER}
    version = {"anthropic-version": "2023-06-01"}
    key = fake_anthropic.api_key

    async with httpx.AsyncClient(base_url=fake_anthropic.base_url) as http:
        by_api_key = await http.post(
            "/v1/messages", headers={"x-api-key": key, **version}, json=body
        )
        by_bearer = await http.post(
            "/v1/messages", headers={"authorization": f"Bearer {key}", **version}, json=body
        )
        missing = await http.post("/v1/messages", headers=version, json=body)
        no_version = await http.post("/v1/messages", headers={"x-api-key": key}, json=body)

    assert by_api_key.status_code == by_bearer.status_code == 200
    assert by_api_key.json()["type"] == "message"
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert no_version.status_code == 400
    assert no_version.json()["error"]["message"] == "anthropic-version: header is required"


async def test_wrong_key_is_an_authentication_error(fake_anthropic: FakeAnthropicServer):
    client = anthropic.AsyncAnthropic(
        base_url=fake_anthropic.base_url, api_key="sk-ant-wrong", max_retries=0
    )
    fake_anthropic.script(Reply(["never sent"]))
    try:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await create(client)
    finally:
        await client.close()

    assert caught.value.type == "authentication_error"
    assert fake_anthropic.requests[0].status == 401
    assert fake_anthropic.pending() == 1


async def test_control_endpoints_script_a_separate_fake(
    fake_anthropic: FakeAnthropicServer, http: httpx.AsyncClient
):
    headers = {"x-api-key": fake_anthropic.api_key, "anthropic-version": "2023-06-01"}
    entries = [
        {"kind": "error", "status": 529},
        {"kind": "reply", "content": [{"type": "tool_use", "name": "get_weather", "input": {}}]},
    ]

    body = {"model": MODEL, "max_tokens": 64, "messages": USER, "tools": [WEATHER_TOOL]}
    scripted = await http.post("/_fake/script", headers=headers, json={"entries": entries})
    overloaded = await http.post("/v1/messages", headers=headers, json=body)
    tool_call = await http.post("/v1/messages", headers=headers, json=body)
    recorded = await http.get("/_fake/requests", headers=headers)
    bad = await http.post("/_fake/script", headers=headers, json={"entries": [{"kind": "x"}]})
    await http.post("/_fake/reset", headers=headers)

    assert scripted.json() == {"pending": 2}
    assert overloaded.status_code == 529
    assert tool_call.json()["stop_reason"] == "tool_use"
    assert [item["status"] for item in recorded.json()["requests"]] == [529, 200]
    assert bad.status_code == 400
    assert fake_anthropic.requests == []


async def test_demo_mode_calls_the_first_tool_once():
    async with FakeAnthropicServer(FakeAnthropic(call_tools_by_default=True)) as fake:
        client = sdk_client(fake)
        try:
            first = await create(client, tools=[WEATHER_TOOL])
            call = first.content[0]
            assert call.type == "tool_use"
            result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
            history = [*USER, first.to_param(), {"role": "user", "content": [result]}]
            second = await create(client, tools=[WEATHER_TOOL], messages=history)
        finally:
            await client.close()

    assert (call.name, call.input, first.stop_reason) == (
        "get_weather",
        {"city": "example"},
        "tool_use",
    )
    assert second.stop_reason == "end_turn"


def test_runs_as_a_command():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "app.llm.fake_anthropic",
        "--port",
        str(port),
        "--api-key",
        "k",
    ]
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/messages",
                    headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                    json={"model": MODEL, "max_tokens": 64, "messages": USER},
                )
                break
            except httpx.ConnectError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert response.status_code == 200
    assert response.json()["content"][0]["text"].startswith("Fake answer to:")


_texts = st.text(min_size=1, max_size=200).filter(str.strip)
_inputs = st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20), max_size=5)


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(_texts, min_size=0, max_size=3),
    inputs=st.lists(_inputs, max_size=2),
    chunk_chars=st.integers(min_value=1, max_value=40),
    max_tokens=st.integers(min_value=0, max_value=120),
)
def test_streamed_events_reassemble_into_the_message(
    texts: list[str], inputs: list[dict[str, Any]], chunk_chars: int, max_tokens: int
):
    blocks = [*texts, *(ToolUse("tool", value, id=f"toolu_{n}") for n, value in enumerate(inputs))]
    request = {"model": MODEL, "max_tokens": max_tokens, "messages": USER}
    rendered = render(Reply(blocks), request, InputUsage(input_tokens=10))

    assembled: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    stop: dict[str, Any] = {}
    for name, data in stream_events(rendered, chunk_chars):
        if name == "content_block_start":
            assembled.append(dict(data["content_block"]))
        elif name == "content_block_delta" and data["delta"]["type"] == "text_delta":
            assembled[data["index"]]["text"] += data["delta"]["text"]
        elif name == "content_block_delta":
            partial[data["index"]] = partial.get(data["index"], "") + data["delta"]["partial_json"]
        elif name == "message_delta":
            stop = data
    message = rendered.message
    cut = message["stop_reason"] == "max_tokens"
    for index, raw in partial.items():
        assert raw == rendered.tool_json[index]
        if not cut:
            assembled[index]["input"] = json.loads(raw)
    for streamed, block in zip(assembled, message["content"], strict=True):
        if block["type"] == "text" or not cut:
            assert streamed == block
    assert stop["delta"]["stop_reason"] == message["stop_reason"]
    assert stop["usage"]["output_tokens"] == message["usage"]["output_tokens"] <= max_tokens


async def test_concurrent_requests_are_all_answered(
    fake_anthropic: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
):
    fake_anthropic.script_always(Reply(["ok"], delay_seconds=0.2))

    started = time.monotonic()
    answers = await asyncio.gather(*(create(sdk) for _ in range(10)))

    assert time.monotonic() - started < 1.0  # served concurrently: one by one takes 2 s
    assert {answer.content[0].text for answer in answers if answer.content[0].type == "text"} == {
        "ok"
    }
    assert len({request.request_id for request in fake_anthropic.requests}) == 10

"""Limits end a session with a distinct error code; loop detection warns the model first
and ends the session if it goes on; cancellation is honoured at the next safe point."""

from __future__ import annotations

import asyncio
from typing import Any

from app.api.context import AppContext
from app.llm.function_model import FunctionModel
from app.llm.model import ModelRequest, ModelResponse, TokenUsage
from app.llm.providers import ModelResolver
from app.tools.spec import SideEffect, ToolContext, ToolSpec
from tests.runtime_fixtures import Api, PoolFactory, call, script


def _tool_turn(name: str, arguments: dict[str, Any], turn: int, tokens: int = 10) -> ModelResponse:
    return ModelResponse(
        content=[{"type": "tool_use", "id": f"toolu_{turn:03d}", "name": name, "input": arguments}],
        stop_reason="tool_use",
        usage=TokenUsage(tokens, tokens),
        model="claude-sonnet-4-5",
    )


def _endless_lookups(request: ModelRequest) -> ModelResponse:
    turn = request.assistant_turns
    return _tool_turn("lookup_order", {"order_id": f"ord_{1000 + turn}"}, turn, tokens=1000)


async def test_each_limit_ends_the_session_with_its_code(
    api: Api, start_pool: PoolFactory, context: AppContext
) -> None:
    models = ModelResolver()
    models.register("claude-sonnet-4-5", FunctionModel(_endless_lookups))
    base: dict[str, Any] = {"model": "claude-sonnet-4-5", "tools": ["lookup_order"]}
    await api.create_agent(name="turns", limits={"max_turns": 3}, **base)
    await api.create_agent(name="tokens", limits={"max_tokens_total": 5000}, **base)
    await api.create_agent(name="cost", limits={"max_cost_usd": 0.05}, **base)
    await api.create_agent(
        name="slow",
        limits={"deadline_seconds": 0.5},
        **script({"text": "thinking", "delay_ms": 3000}),
    )
    await start_pool(models=models)
    expected = {
        "turns": ("failed", "max_turns_exceeded"),
        "tokens": ("failed", "token_budget_exceeded"),
        "cost": ("failed", "cost_budget_exceeded"),
        "slow": ("timed_out", "deadline_exceeded"),
    }
    started = {name: (await api.start(name, "go"))["id"] for name in expected}
    for name, (status, code) in expected.items():
        session = await api.wait(started[name])
        assert (session["status"], session["error"]["code"]) == (status, code), session
    assert (await api.get(started["turns"]))["turns"] == 3
    tokens = (await api.get(started["tokens"]))["usage"]
    assert tokens["input_tokens"] + tokens["output_tokens"] >= 5000
    assert (await api.get(started["cost"]))["usage"]["cost_usd"] >= 0.05


def _looping(shape: str) -> FunctionModel:
    def turn(request: ModelRequest) -> ModelResponse:
        n = request.assistant_turns
        if shape == "repeat":
            return _tool_turn("lookup_order", {"order_id": "ord_1001"}, n)
        if shape == "alternate":
            return _tool_turn("lookup_order", {"order_id": "ord_1001" if n % 2 else "ord_1002"}, n)
        return _tool_turn("refund_order", {"order_id": "ord_9999", "amount": 1 + n}, n)  # spiral

    return FunctionModel(turn)


async def test_loop_detection_warns_then_ends_for_each_shape(
    api: Api, start_pool: PoolFactory
) -> None:
    models = ModelResolver()
    for shape in ("repeat", "alternate", "spiral"):
        models.register(f"loop-{shape}", _looping(shape))
        await api.create_agent(
            name=f"loop-{shape}", model=f"loop-{shape}", tools=["lookup_order", "refund_order"]
        )
    await start_pool(models=models)
    for shape in ("repeat", "alternate", "spiral"):
        session = await api.wait((await api.start(f"loop-{shape}", "go"))["id"])
        assert session["status"] == "failed", (shape, session)
        assert session["error"]["code"] == "loop_detected", (shape, session)
        notes = [e for e in await api.events(session["id"]) if e["type"] == "platform.note"]
        assert [n["data"]["kind"] for n in notes] == ["loop_warning"], shape
        # Ended on the call right after the warning: the model was told first.
        warned_after = next(
            i for i, e in enumerate(await api.events(session["id"])) if e["type"] == "platform.note"
        )
        responses_after = [
            e
            for e in (await api.events(session["id"]))[warned_after:]
            if e["type"] == "model.response"
        ]
        assert len(responses_after) == 1, shape


async def test_a_model_that_heeds_the_warning_runs_on(api: Api, start_pool: PoolFactory) -> None:
    def turn(request: ModelRequest) -> ModelResponse:
        n = request.assistant_turns
        if n < 3:
            return _tool_turn("lookup_order", {"order_id": "ord_1001"}, n)
        return ModelResponse(
            content=[{"type": "text", "text": "ok, stopping"}], stop_reason="end_turn"
        )

    models = ModelResolver()
    models.register("heeds", FunctionModel(turn))
    await api.create_agent(name="heeds", model="heeds", tools=["lookup_order"])
    await start_pool(models=models)
    session = await api.wait((await api.start("heeds", "go"))["id"])
    assert session["status"] == "completed" and session["result"] == "ok, stopping"


async def test_cancel_while_a_tool_runs_lets_no_later_tool_run(
    api: Api, start_pool: PoolFactory, context: AppContext
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def slow(arguments: dict[str, Any], _context: ToolContext) -> dict[str, str]:
        ran.append(arguments["label"])
        started.set()
        await release.wait()
        return {"label": arguments["label"]}

    context.tools.register(
        ToolSpec(
            name="slow_step",
            description="A step that takes a while.",
            input_schema={
                "type": "object",
                "properties": {"label": {"type": "string"}},
                "required": ["label"],
            },
            executor=slow,
            side_effect=SideEffect.WRITE,
        )
    )
    await api.create_agent(
        name="cancellable",
        tools=["slow_step"],
        **script(
            {"tool_use": [call("slow_step", label="first")]},
            {"tool_use": [call("slow_step", label="second")]},
        ),
    )
    await start_pool()
    session = await api.start("cancellable", "go")
    await asyncio.wait_for(started.wait(), 10)
    response = await api.http.post(f"/v1/sessions/{session['id']}/cancel", headers=api.headers)
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    await asyncio.sleep(0.2)
    release.set()
    done = await api.wait(session["id"])
    assert done["status"] == "cancelled"
    assert ran == ["first"]  # the second tool never ran
    ledger = await api.tool_calls(session["id"])
    assert [(c["tool"], c["status"]) for c in ledger] == [("slow_step", "succeeded")]

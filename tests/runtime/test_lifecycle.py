"""A session's life through the API and a worker: queued → running → completed, with its
events in order and a tool-call ledger that matches what ran."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from app.api.context import AppContext
from app.tools.demo_models import DemoRefund
from tests.runtime_fixtures import Api, PoolFactory, call, script


async def _refunds(context: AppContext, session_id: str) -> int:
    async with context.session_factory() as db:
        return int(
            (
                await db.execute(select(func.count()).where(DemoRefund.session_id == session_id))
            ).scalar_one()
        )


async def test_support_demo_session_completes_with_result_turns_usage(
    api: Api, start_pool: PoolFactory, context: AppContext
) -> None:
    await start_pool()
    created = await api.start("support", {"order_id": "ord_1002", "amount": 30})
    assert created["status"] == "queued"
    done = await api.wait(created["id"])
    assert done["status"] == "completed", done
    assert done["result"] == "Refunded 30 USD for order ord_1002."
    assert done["turns"] == 3
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    assert done["finished_at"] is not None and done["agent_version"] >= 1

    events = await api.events(created["id"])
    types = [event["type"] for event in events]
    assert types == [
        "session.queued", "session.running",
        "model.response", "tool.result",
        "model.response", "tool.result",
        "model.response", "session.completed",
    ]  # fmt: skip
    # An event's id is its place in the session's log: 1, 2, 3, ... (the SSE id too)
    assert [event["id"] for event in events] == list(range(1, len(events) + 1))
    assert [event["seq"] for event in events] == [event["id"] for event in events]

    ledger = await api.tool_calls(created["id"])
    assert [(c["tool"], c["status"], c["attempts"]) for c in ledger] == [
        ("lookup_order", "succeeded", 1),
        ("refund_order", "succeeded", 1),
    ]
    assert ledger[1]["arguments"] == {"order_id": "ord_1002", "amount": 30}
    assert await _refunds(context, created["id"]) == 1


async def test_parallel_tool_calls_return_in_one_message_with_matching_ids(
    api: Api, start_pool: PoolFactory
) -> None:
    await api.create_agent(
        name="parallel",
        tools=["lookup_order"],
        **script(
            {
                "tool_use": [
                    call("lookup_order", order_id="ord_1001"),
                    call("lookup_order", order_id="ord_1003"),
                    call("lookup_order", order_id="nope"),
                ]
            },
        ),
    )
    await start_pool()
    session = await api.wait((await api.start("parallel", "look three up"))["id"])
    assert session["status"] == "completed"
    ledger = await api.tool_calls(session["id"])
    assert len(ledger) == 3 and {c["turn"] for c in ledger} == {1}
    assert all(c["status"] == "succeeded" for c in ledger)
    # The offline model's final answer summarises the tool results it received: all three,
    # each under its own tool_use id, in one user message.
    for position in range(3):
        assert f"toolu_offline_000_{position:02d} (ok)" in session["result"]


async def test_tool_errors_go_back_to_the_model_as_is_error(
    api: Api, start_pool: PoolFactory
) -> None:
    await api.create_agent(
        name="errors",
        tools=["refund_order", "lookup_order"],
        **script(
            {"tool_use": [call("refund_order", order_id="ord_1001", amount=-5)]},  # invalid input
            {"tool_use": [call("refund_order", order_id="ord_9999", amount=5)]},  # executor raises
            {"tool_use": [call("delete_everything")]},  # not the agent's tool
        ),
    )
    await start_pool()
    session = await api.wait((await api.start("errors", "go"))["id"])
    assert session["status"] == "completed"
    ledger = await api.tool_calls(session["id"])
    assert [c["status"] for c in ledger] == ["failed", "failed", "denied"]
    assert "greater than 0" in (ledger[0]["error"] or "")
    assert "does not exist" in (ledger[1]["error"] or "")
    assert ledger[1]["attempts"] == 1  # not idempotent: never retried
    assert "(error)" in session["result"]


async def test_output_schema_is_enforced_with_a_bounded_re_ask(
    api: Api, start_pool: PoolFactory
) -> None:
    schema: dict[str, Any] = {
        "type": "object", "required": ["refund"], "properties": {"refund": {"type": "number"}},
    }  # fmt: skip
    await api.create_agent(
        name="structured",
        output_schema=schema,
        **script({"text": "not json"}, {"text": '{"refund": "ten"}'}, {"text": '{"refund": 10}'}),
    )
    await api.create_agent(
        name="never-valid",
        output_schema=schema,
        limits={"max_output_retries": 1},
        **script({"text": "nope"}, {"text": "still nope"}, {"text": '{"refund": 1}'}),
    )
    await start_pool()
    good = await api.wait((await api.start("structured", "x"))["id"])
    assert good["status"] == "completed" and good["result"] == {"refund": 10}
    notes = [e for e in await api.events(good["id"]) if e["type"] == "platform.note"]
    assert [n["data"]["kind"] for n in notes] == ["output_retry", "output_retry"]
    bad = await api.wait((await api.start("never-valid", "x"))["id"])
    assert bad["status"] == "failed" and bad["error"]["code"] == "output_invalid"

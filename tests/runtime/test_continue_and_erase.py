"""Continuing a conversation (one run at a time: reject or queue, never interleave) and
erasing a finished session with everything stored about it."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.api.context import AppContext
from app.llm.function_model import FunctionModel
from app.llm.model import ModelRequest, ModelResponse
from app.llm.providers import ModelResolver
from tests.conftest import TokenFactory, bearer
from tests.runtime_fixtures import Api, PoolFactory, script


def _user_texts(request: ModelRequest) -> list[str]:
    return [
        block["text"]
        for message in request.messages
        if message["role"] == "user"
        for block in message["content"]
        if block.get("type") == "text"
    ]


def _echo(request: ModelRequest) -> ModelResponse:
    return ModelResponse(
        content=[{"type": "text", "text": f"answer to: {_user_texts(request)[-1]}"}],
        stop_reason="end_turn",
    )


async def test_a_second_message_runs_with_the_first_exchange_in_context(
    api: Api, start_pool: PoolFactory
) -> None:
    model = FunctionModel(_echo)
    models = ModelResolver()
    models.register("echo", model)
    await api.create_agent(name="chat", model="echo")
    await start_pool(models=models)
    session = await api.start("chat", "first question")
    assert (await api.wait(session["id"]))["result"] == "answer to: first question"
    response = await api.http.post(
        f"/v1/sessions/{session['id']}/messages",
        json={"input": "second question"},
        headers=api.headers,
    )
    assert response.status_code == 202 and response.json()["status"] == "queued"
    done = await api.wait(session["id"])
    assert done["status"] == "completed" and done["result"] == "answer to: second question"
    second = model.requests[-1]
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1]["content"][0]["text"] == "answer to: first question"
    types = [e["type"] for e in await api.events(session["id"])]
    assert types.count("session.completed") == 2 and "user.message" in types


async def test_an_offline_script_goes_on_from_its_next_unused_entry(
    api: Api, start_pool: PoolFactory
) -> None:
    await api.create_agent(
        name="steps", **script({"text": "first answer"}, {"text": "second answer"})
    )
    await start_pool()
    session = await api.start("steps", "hello")
    assert (await api.wait(session["id"]))["result"] == "first answer"
    await api.http.post(
        f"/v1/sessions/{session['id']}/messages", json={"input": "more"}, headers=api.headers
    )
    assert (await api.wait(session["id"]))["result"] == "second answer"


async def test_input_during_a_run_is_rejected_or_queued_never_interleaved(
    api: Api, start_pool: PoolFactory
) -> None:
    release = asyncio.Event()
    model_calls: list[list[str]] = []

    async def slow_then_echo(request: ModelRequest) -> ModelResponse:
        model_calls.append(_user_texts(request))
        if len(model_calls) == 1:
            await release.wait()
        return _echo(request)

    models = ModelResolver()
    models.register("slow-echo", FunctionModel(slow_then_echo))
    await api.create_agent(name="busy", model="slow-echo")
    await start_pool(models=models)
    session = await api.start("busy", "one")
    await api.wait(session["id"], until=("running",))
    url = f"/v1/sessions/{session['id']}/messages"
    rejected = await api.http.post(url, json={"input": "two"}, headers=api.headers)
    assert rejected.status_code == 409 and rejected.json()["type"].endswith("session-busy")
    queued = await api.http.post(
        url, json={"input": "two", "if_busy": "queue"}, headers=api.headers
    )
    assert queued.status_code == 202
    release.set()
    done = await api.wait(session["id"])
    assert done["status"] == "completed" and done["result"] == "answer to: two"
    assert model_calls == [["one"], ["one", "two"]]  # the run in progress never saw "two"
    types = [e["type"] for e in await api.events(session["id"])]
    assert types.count("session.completed") == 1  # taken up by the same run, after its answer
    assert types.index("user.message") > types.index("model.response")


async def test_a_cancelled_session_cannot_be_continued(api: Api) -> None:
    await api.create_agent(name="never", **script({"text": "x"}))
    session = await api.start("never", "go")
    await api.http.post(f"/v1/sessions/{session['id']}/cancel", headers=api.headers)
    response = await api.http.post(
        f"/v1/sessions/{session['id']}/messages", json={"input": "again"}, headers=api.headers
    )
    assert response.status_code == 409


async def _rows(context: AppContext, session_id: str) -> dict[str, int]:
    """Rows mentioning the session in every table that has a session column (the audit
    log excepted: append-only by design; its payloads are erasable — guardrails issue)."""
    counts = {}
    async with context.session_factory() as db:
        tables = (
            await db.execute(
                text(
                    "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public'"
                    " AND column_name = 'session_id' AND table_name NOT IN ('audit_log', 'demo_refunds')"
                )
            )
        ).scalars()
        for table in list(tables):
            counts[table] = (
                await db.execute(
                    text(f"SELECT count(*) FROM {table} WHERE session_id = :s"), {"s": session_id}
                )
            ).scalar_one()
        counts["idempotency_keys"] = (
            await db.execute(
                text("SELECT count(*) FROM idempotency_keys WHERE resource_id = :s"),
                {"s": session_id},
            )
        ).scalar_one()
    return counts


async def test_erasing_a_finished_session_removes_everything_about_it(
    api: Api, start_pool: PoolFactory, context: AppContext, make_token: TokenFactory
) -> None:
    await start_pool()
    created = await api.http.post(
        "/v1/sessions",
        json={"agent": "support", "input": {"order_id": "ord_1007", "amount": 1}},
        headers={**api.headers, "Idempotency-Key": "erase-me"},
    )
    session = created.json()
    await api.wait(session["id"])
    before = await _rows(context, session["id"])
    assert (
        before["tool_calls"] == 2
        and before["idempotency_keys"] == 1
        and before["session_events"] > 5
    )
    url = f"/v1/sessions/{session['id']}"
    client_only = bearer(make_token(api.tenant, roles=("client",)))
    assert (await api.http.delete(url, headers=client_only)).status_code == 403
    other_tenant = bearer(make_token(api.tenant + "-other", roles=("admin",)))
    assert (await api.http.delete(url, headers=other_tenant)).status_code == 404
    assert (await api.http.delete(url, headers=api.headers)).status_code == 204
    after = await _rows(context, session["id"])
    assert set(after) >= {
        "sessions",
        "session_events",
        "tool_calls",
        "approvals",
        "memories",
        "webhook_outbox",
    }
    assert all(count == 0 for count in after.values()), after
    assert (await api.http.get(url, headers=api.headers)).status_code == 404
    assert (await api.http.delete(url, headers=api.headers)).status_code == 404


async def test_a_session_that_is_not_finished_cannot_be_erased(
    api: Api, context: AppContext
) -> None:
    await api.create_agent(name="waiting", **script({"text": "x"}))
    session = await api.start("waiting", "nobody runs me")
    response = await api.http.delete(f"/v1/sessions/{session['id']}", headers=api.headers)
    assert response.status_code == 409 and response.json()["type"].endswith("session-busy")
    assert (await _rows(context, session["id"]))["sessions"] == 1

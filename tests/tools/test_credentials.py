"""Tool credentials per agent and tool: only the executor sees them; rotation and revocation
apply at the next call, for one agent only; the value is never stored in the clear, shown
by the API, or written to events, the ledger or the audit log."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from app.api.context import AppContext
from app.tools.spec import SideEffect, ToolContext, ToolSpec
from tests.receiver import Receiver, serving
from tests.runtime_fixtures import Api, PoolFactory, call, script


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


async def whoami(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    credential = context.secrets.get("credential")
    return {"fingerprint": None if credential is None else fingerprint(credential)}


@pytest.fixture
def credential_tool(context: AppContext) -> str:
    name = f"whoami_{uuid.uuid4().hex[:6]}"
    context.tools.register(
        ToolSpec(
            name=name,
            description="Which credential do my calls carry?",
            input_schema={"type": "object", "properties": {}},
            executor=whoami,
            idempotent=True,
            side_effect=SideEffect.READ,
            accepts_credential=True,
        )
    )
    return name


async def _agent(api: Api, name: str, tool: str, turns: int = 1) -> None:
    await api.create_agent(name=name, tools=[tool], **script(*[{"tool_use": [call(tool)]}] * turns))


async def _seen(api: Api, agent: str) -> str | None:
    session = await api.start(agent, "x")
    done = await api.wait(session["id"])
    assert done["status"] == "completed", done
    [record] = await api.tool_calls(session["id"])
    preview = record["result_preview"]
    return None if '"fingerprint":null' in preview.replace(" ", "") else preview


async def test_each_agent_gets_its_own_credential_rotation_and_revocation_apply_next_call(
    api: Api, start_pool: PoolFactory, context: AppContext, credential_tool: str
) -> None:
    await _agent(api, "agent-a", credential_tool)
    await _agent(api, "agent-b", credential_tool)
    await start_pool(2)
    url = f"/v1/agents/agent-a/credentials/{credential_tool}"
    assert (
        await api.http.put(url, json={"secret": "sk-first-0001"}, headers=api.headers)
    ).status_code == 204
    assert fingerprint("sk-first-0001") in (await _seen(api, "agent-a") or "")
    assert await _seen(api, "agent-b") is None  # another agent, same tool: nothing
    # Rotation: the next call carries the new value (no restart).
    assert (
        await api.http.put(url, json={"secret": "sk-second-0002"}, headers=api.headers)
    ).status_code == 204
    assert fingerprint("sk-second-0002") in (await _seen(api, "agent-a") or "")
    listed = (await api.http.get("/v1/agents/agent-a/credentials", headers=api.headers)).json()
    assert [(c["tool"], c["version"]) for c in listed["items"]] == [(credential_tool, 2)]
    assert "sk-second" not in str(listed)
    # Revocation for agent-a only.
    await api.http.put(
        f"/v1/agents/agent-b/credentials/{credential_tool}",
        json={"secret": "sk-b-0003"},
        headers=api.headers,
    )
    assert (await api.http.delete(url, headers=api.headers)).status_code == 204
    assert await _seen(api, "agent-a") is None
    assert fingerprint("sk-b-0003") in (await _seen(api, "agent-b") or "")
    assert (await api.http.delete(url, headers=api.headers)).status_code == 404
    # Never in the clear anywhere the platform stores things.
    async with context.session_factory() as db:
        for table in ("tool_credentials", "session_events", "tool_calls", "audit_payloads"):
            found = await db.scalar(
                text(f"SELECT count(*) FROM {table} t WHERE t::text LIKE '%sk-%-000%'")
            )
            assert found == 0, table


async def test_credentials_need_an_admin_and_a_tool_the_agent_uses(
    api: Api, credential_tool: str, make_token: Any
) -> None:
    await _agent(api, "agent-c", credential_tool)
    client = {"Authorization": f"Bearer {make_token(api.tenant, roles=('client',))}"}
    url = f"/v1/agents/agent-c/credentials/{credential_tool}"
    assert (await api.http.put(url, json={"secret": "x"}, headers=client)).status_code == 403
    other = await api.http.put(
        "/v1/agents/agent-c/credentials/refund_order", json={"secret": "x"}, headers=api.headers
    )
    assert other.status_code == 422
    missing = await api.http.put(
        f"/v1/agents/nobody/credentials/{credential_tool}",
        json={"secret": "x"},
        headers=api.headers,
    )
    assert missing.status_code == 404


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving(Receiver()) as app:
        yield app


async def test_an_http_tool_sends_the_credential_as_a_bearer_token(
    receiver: Receiver, context: AppContext
) -> None:
    from app.tools.http import http_executor

    path = f"/echo/{uuid.uuid4().hex}"
    execute = http_executor("create_ticket", receiver.url(path), None, ["127.0.0.1"])
    tool_context = ToolContext(
        tenant_id="t",
        session_id="ses_x",
        tool_use_id="toolu_1",
        session_factory=context.session_factory,
        idempotency_key="k",
        secrets={"credential": "sk-http-0004"},
    )
    await execute({"title": "x"}, tool_context)
    [request] = receiver.hits(path)
    assert request.headers["authorization"] == "Bearer sk-http-0004"

"""Approvals over HTTP and for the runtime: a request parks nothing by itself (tests park the
session with SQL, as the runtime's step would), reviewers list, read and decide; decisions
are final and idempotent, expiry is a policy, quorum counts distinct reviewers, and the
decision or expiry that settles a session re-queues it with a NOTIFY wake-up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from app.api.auth import Principal, Role
from app.api.context import AppContext
from app.hitl import expiry
from app.hitl import service as hitl_service
from app.hitl.schemas import Decision, DecisionBody
from app.runtime.store import asyncpg_dsn, create_pool
from app.sessions.events import NOTIFY_CHANNEL
from app.settings import WebhookSettings
from app.tenants.scoping import TenantScope
from app.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import TokenFactory, bearer
from tests.receiver import Receiver, serving
from tests.runtime_fixtures import Api

PROPOSED = {"order_id": "ord_1001", "amount": 250}
CREATOR = "tester"  # the subject of `Api`'s token: it starts every session here


@pytest.fixture
async def conn(context: AppContext) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection, as the runtime has (autocommit unless a test opens a transaction)."""
    connection = await asyncpg.connect(asyncpg_dsn(context.database_url))
    yield connection
    await connection.close()


@pytest.fixture
def reviewer(make_token: TokenFactory, tenant: str) -> Callable[[str], dict[str, str]]:
    """Headers of a reviewer of the test's tenant, by subject."""
    return lambda sub: bearer(make_token(tenant, sub=sub, roles=("reviewer",)))


async def _parked_request(
    api: Api, conn: asyncpg.Connection, *, tool_use_id: str = "toolu_1", **gate: Any
) -> tuple[str, str]:
    """(session id, approval id): a session parked in awaiting_approval on one request."""
    session = await api.start("support", PROPOSED)
    approval_id = await _request(conn, api.tenant, session["id"], tool_use_id=tool_use_id, **gate)
    return session["id"], approval_id


async def _request(
    conn: asyncpg.Connection, tenant: str, session_id: str, *, tool_use_id: str, **gate: Any
) -> str:
    """What the runtime's step does: ask, and park the session, in one transaction."""
    async with conn.transaction():
        approval_id = await hitl_service.request_approval(
            conn,
            tenant_id=tenant,
            session_id=session_id,
            subject=CREATOR,
            tool_use_id=tool_use_id,
            tool="refund_order",
            arguments=PROPOSED,
            gate=gate.pop("gate", "approval"),
            reason="refunds over $100 need a reviewer",
            agent_reasoning="The order qualifies; refunding.",
            context={"lookup_order": {"found": True, "total": 300}},
            timeout_seconds=gate.pop("timeout_seconds", 3600),
            **gate,
        )
        await conn.execute(
            "UPDATE sessions SET status = 'awaiting_approval' WHERE session_id = $1", session_id
        )
    return approval_id


async def _decide(
    http: httpx.AsyncClient, headers: dict[str, str], approval_id: str, **body: Any
) -> httpx.Response:
    return await http.post(f"/v1/approvals/{approval_id}/decision", json=body, headers=headers)


async def _make_due(conn: asyncpg.Connection, approval_id: str) -> None:
    await conn.execute(
        "UPDATE approvals SET expires_at = now() - interval '1 second' WHERE approval_id = $1",
        approval_id,
    )


async def _status(conn: asyncpg.Connection, approval_id: str) -> str:
    return str(
        await conn.fetchval("SELECT status FROM approvals WHERE approval_id = $1", approval_id)
    )


async def _audited(conn: asyncpg.Connection, session_id: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT actor, action FROM audit_log WHERE session_id = $1 AND action LIKE 'approval.%'"
        " ORDER BY audit_id",
        session_id,
    )
    return [(row["actor"], row["action"]) for row in rows]


# -- deciding ----------------------------------------------------------------------------------


async def test_an_approval_requeues_the_session_at_once_with_a_wake_up(
    api: Api,
    conn: asyncpg.Connection,
    context: AppContext,
    reviewer: Callable[[str], dict[str, str]],
) -> None:
    session_id, approval_id = await _parked_request(api, conn)
    shown = (await api.http.get(f"/v1/approvals/{approval_id}", headers=reviewer("rita"))).json()
    assert shown["status"] == "pending" and shown["agent"] == "support"
    assert shown["arguments"] == PROPOSED and shown[
        "arguments_hash"
    ] == hitl_service.arguments_hash(PROPOSED)
    assert shown["gate"] == "approval" and shown["reason"] == "refunds over $100 need a reviewer"
    assert shown["agent_reasoning"] == "The order qualifies; refunding."
    assert shown["context"] == {"lookup_order": {"found": True, "total": 300}}

    listener = await asyncpg.connect(asyncpg_dsn(context.database_url))
    wake_ups: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: wake_ups.put_nowait(args[3]))
    try:
        response = await _decide(
            api.http, reviewer("rita"), approval_id, decision="approve", comment="ok"
        )
        assert response.status_code == 200, response.text
        async with asyncio.timeout(5):
            while (await wake_ups.get()) != f"{session_id}:queued":
                pass
    finally:
        await listener.close()
    decided = response.json()
    assert decided["status"] == "approved" and decided["decided_by"] == "rita"
    assert decided["comment"] == "ok" and decided["decided_at"] is not None
    assert decided["approved_arguments"] == PROPOSED
    assert [vote["reviewer"] for vote in decided["decisions"]] == ["rita"]
    assert (await api.get(session_id))["status"] == "queued"
    requeued = [e for e in await api.events(session_id) if e["type"] == "session.queued"][-1]
    assert requeued["data"]["reason"] == "approval_decided"

    assert await _audited(conn, session_id) == [
        ("platform", "approval.requested"),
        ("rita", "approval.decided"),
    ]

    outcome = (await hitl_service.decided_for(conn, session_id))["toolu_1"]
    assert outcome.approved and outcome.status == "approved" and outcome.decided_by == "rita"
    assert outcome.arguments == PROPOSED
    assert outcome.arguments_hash == hitl_service.arguments_hash(PROPOSED)


async def test_a_decision_is_final_the_same_one_repeated_is_the_same_200(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, approval_id = await _parked_request(api, conn)
    first = await _decide(api.http, reviewer("rita"), approval_id, decision="reject", comment="no")
    assert first.status_code == 200 and first.json()["status"] == "rejected"
    again = await _decide(api.http, reviewer("rita"), approval_id, decision="reject", comment="no")
    assert again.status_code == 200 and again.json() == first.json()

    changed_mind = await _decide(api.http, reviewer("rita"), approval_id, decision="approve")
    assert changed_mind.status_code == 409, changed_mind.text
    assert changed_mind.headers["content-type"] == "application/problem+json"
    second_reviewer = await _decide(api.http, reviewer("sam"), approval_id, decision="reject")
    assert second_reviewer.status_code == 409
    shown = (await api.http.get(f"/v1/approvals/{approval_id}", headers=reviewer("sam"))).json()
    assert shown == first.json()  # nothing changed: one vote, rita's rejection

    outcome = (await hitl_service.decided_for(conn, session_id))["toolu_1"]
    assert not outcome.approved and outcome.arguments is None and outcome.comment == "no"


async def test_nobody_decides_their_own_sessions_request(
    api: Api, conn: asyncpg.Connection, make_token: TokenFactory
) -> None:
    _, approval_id = await _parked_request(api, conn)
    for roles in (("reviewer",), ("admin",)):
        own = bearer(make_token(api.tenant, sub=CREATOR, roles=roles))
        response = await _decide(api.http, own, approval_id, decision="approve")
        assert response.status_code == 403, response.text
        assert response.json()["type"].endswith("/self-approval")
    assert await _status(conn, approval_id) == "pending"


async def test_another_tenants_reviewer_gets_404_and_other_roles_403(
    api: Api, conn: asyncpg.Connection, make_token: TokenFactory
) -> None:
    _, approval_id = await _parked_request(api, conn)
    intruder = bearer(make_token(f"{api.tenant}-b", sub="eve", roles=("reviewer", "admin")))
    assert (await api.http.get(f"/v1/approvals/{approval_id}", headers=intruder)).status_code == 404
    response = await _decide(api.http, intruder, approval_id, decision="approve")
    assert response.status_code == 404, response.text
    listed = (await api.http.get("/v1/approvals", headers=intruder)).json()
    assert listed["items"] == []

    client_only = bearer(make_token(api.tenant, sub="carl", roles=("client",)))
    assert (await api.http.get("/v1/approvals", headers=client_only)).status_code == 403
    assert (
        await _decide(api.http, client_only, approval_id, decision="approve")
    ).status_code == 403
    assert (await api.http.get(f"/v1/approvals/{approval_id}")).status_code == 401
    assert await _status(conn, approval_id) == "pending"


async def test_modify_needs_valid_object_arguments_and_binds_them(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, approval_id = await _parked_request(api, conn)
    rita = reviewer("rita")
    for body in (
        {"decision": "modify"},
        {"decision": "modify", "arguments": [1, 2]},
        {"decision": "modify", "arguments": "amount=50"},
        {"decision": "approve", "arguments": {"order_id": "ord_1001", "amount": 50}},
        {"decision": "modify", "arguments": {"order_id": "ord_1001", "amount": -5}},  # tool input
        {"decision": "maybe"},
    ):
        response = await _decide(api.http, rita, approval_id, **body)
        assert response.status_code == 422, (body, response.text)
    assert {e["field"] for e in response.json()["errors"]} == {"decision"}
    assert await _status(conn, approval_id) == "pending"

    smaller = {"order_id": "ord_1001", "amount": 50}
    response = await _decide(api.http, rita, approval_id, decision="modify", arguments=smaller)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "modified"
    assert response.json()["approved_arguments"] == smaller
    assert response.json()["arguments"] == PROPOSED  # the proposal stays on record
    repeat = await _decide(api.http, rita, approval_id, decision="modify", arguments=smaller)
    assert repeat.status_code == 200 and repeat.json() == response.json()
    other = await _decide(
        api.http, rita, approval_id, decision="modify", arguments={**smaller, "amount": 60}
    )
    assert other.status_code == 409

    outcome = (await hitl_service.decided_for(conn, session_id))["toolu_1"]
    assert outcome.approved and outcome.status == "modified" and outcome.arguments == smaller
    assert outcome.arguments_hash == hitl_service.arguments_hash(smaller)
    assert (await api.get(session_id))["status"] == "queued"


async def test_a_two_reviewer_gate_counts_distinct_reviewers_once(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, approval_id = await _parked_request(api, conn, reviewers_required=2)
    first = await _decide(api.http, reviewer("rita"), approval_id, decision="approve")
    assert first.status_code == 200 and first.json()["status"] == "pending"
    assert [vote["reviewer"] for vote in first.json()["decisions"]] == ["rita"]
    twice = await _decide(api.http, reviewer("rita"), approval_id, decision="approve")
    assert twice.status_code == 200 and twice.json() == first.json()  # not a second vote
    assert (
        await _decide(api.http, reviewer("rita"), approval_id, decision="reject")
    ).status_code == 409
    assert (await api.get(session_id))["status"] == "awaiting_approval"
    assert await hitl_service.decided_for(conn, session_id) == {}

    second = await _decide(api.http, reviewer("sam"), approval_id, decision="approve")
    assert second.status_code == 200
    assert second.json()["status"] == "approved" and second.json()["decided_by"] == "sam"
    assert [vote["reviewer"] for vote in second.json()["decisions"]] == ["rita", "sam"]
    assert (await api.get(session_id))["status"] == "queued"
    assert (
        await _decide(api.http, reviewer("ted"), approval_id, decision="approve")
    ).status_code == 409


async def test_a_quorum_agrees_on_arguments_and_one_rejection_settles_it(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, approval_id = await _parked_request(api, conn, reviewers_required=2)
    smaller = {"order_id": "ord_1001", "amount": 50}
    await _decide(api.http, reviewer("rita"), approval_id, decision="modify", arguments=smaller)
    split = await _decide(api.http, reviewer("sam"), approval_id, decision="approve")
    assert split.json()["status"] == "pending"  # two votes, for different arguments
    agreed = await _decide(
        api.http, reviewer("ted"), approval_id, decision="modify", arguments=smaller
    )
    assert agreed.json()["status"] == "modified" and agreed.json()["approved_arguments"] == smaller
    assert (await api.get(session_id))["status"] == "queued"

    _, vetoed = await _parked_request(api, conn, tool_use_id="toolu_2", reviewers_required=3)
    await _decide(api.http, reviewer("rita"), vetoed, decision="approve")
    veto = await _decide(api.http, reviewer("sam"), vetoed, decision="reject", comment="too much")
    assert veto.json()["status"] == "rejected" and veto.json()["approved_arguments"] is None


async def test_concurrent_decisions_one_wins_the_other_409(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, approval_id = await _parked_request(api, conn)
    responses = await asyncio.gather(
        _decide(api.http, reviewer("rita"), approval_id, decision="approve"),
        _decide(api.http, reviewer("sam"), approval_id, decision="reject"),
    )
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    stored = json.loads(
        await conn.fetchval(
            "SELECT decisions::text FROM approvals WHERE approval_id = $1", approval_id
        )
    )
    assert [vote["reviewer"] for vote in stored] == [winner["decided_by"]]
    events = [e for e in await api.events(session_id) if e["type"] == "session.queued"]
    assert len(events) == 2  # created, then re-queued once


async def test_the_session_waits_for_every_request_of_its_turn(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, first = await _parked_request(api, conn)
    second = await _request(conn, api.tenant, session_id, tool_use_id="toolu_2")
    await _decide(api.http, reviewer("rita"), first, decision="approve")
    assert (await api.get(session_id))["status"] == "awaiting_approval"
    assert set(await hitl_service.decided_for(conn, session_id)) == {"toolu_1"}
    await _decide(api.http, reviewer("rita"), second, decision="reject")
    assert (await api.get(session_id))["status"] == "queued"
    assert set(await hitl_service.decided_for(conn, session_id)) == {"toolu_1", "toolu_2"}


# -- expiry ------------------------------------------------------------------------------------


async def test_an_expired_request_is_gone_and_the_sweep_rejects_it_by_default(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, approval_id = await _parked_request(api, conn)
    await _make_due(conn, approval_id)
    response = await _decide(api.http, reviewer("rita"), approval_id, decision="approve")
    assert response.status_code == 410, response.text
    assert await _status(conn, approval_id) == "pending"  # the refused decision wrote nothing

    assert session_id in await expiry.expire_due(conn)
    shown = (await api.http.get(f"/v1/approvals/{approval_id}", headers=reviewer("rita"))).json()
    assert shown["status"] == "expired" and shown["on_timeout"] == "reject"
    assert shown["approved_arguments"] is None and shown["decided_by"] is None
    assert (await api.get(session_id))["status"] == "queued"
    requeued = [e for e in await api.events(session_id) if e["type"] == "session.queued"][-1]
    assert requeued["data"]["reason"] == "approval_expired"
    assert requeued["data"]["on_timeout"] == {approval_id: "reject"}
    outcome = (await hitl_service.decided_for(conn, session_id))["toolu_1"]
    assert outcome.status == "expired" and not outcome.approved
    assert (await _audited(conn, session_id))[-1] == ("platform", "approval.decided")

    assert (
        await _decide(api.http, reviewer("rita"), approval_id, decision="reject")
    ).status_code == 410
    assert session_id not in await expiry.expire_due(conn)  # settled once


async def test_a_gate_may_approve_on_timeout(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    session_id, approval_id = await _parked_request(api, conn, on_timeout="approve")
    await _make_due(conn, approval_id)
    assert session_id in await expiry.expire_due(conn)
    outcome = (await hitl_service.decided_for(conn, session_id))["toolu_1"]
    assert outcome.status == "expired" and outcome.approved and outcome.arguments == PROPOSED
    assert outcome.arguments_hash == hitl_service.arguments_hash(PROPOSED)


async def test_a_decision_racing_the_sweep_cannot_both_win(
    api: Api,
    conn: asyncpg.Connection,
    context: AppContext,
    reviewer: Callable[[str], dict[str, str]],
) -> None:
    # The sweep first: a decision arriving meanwhile waits for it, then finds it expired.
    session_id, approval_id = await _parked_request(api, conn)
    await _make_due(conn, approval_id)
    sweep = conn.transaction()
    await sweep.start()
    assert session_id in await expiry.expire_due(conn)
    deciding = asyncio.create_task(
        _decide(api.http, reviewer("rita"), approval_id, decision="approve")
    )
    await asyncio.sleep(0.3)
    assert not deciding.done()  # blocked on the session row the sweep holds
    await sweep.commit()
    assert (await deciding).status_code == 410
    assert await _status(conn, approval_id) == "expired"

    # A decision first (begun before the deadline, committed after it): the sweep skips the
    # request while the decision holds it, and then finds nothing pending.
    session_id, approval_id = await _parked_request(api, conn, tool_use_id="toolu_2")
    await conn.execute(
        "UPDATE approvals SET expires_at = now() + interval '0.5 seconds' WHERE approval_id = $1",
        approval_id,
    )
    async with context.session_factory() as db:
        rita = Principal(sub="rita", tenant=api.tenant, roles=frozenset({Role.REVIEWER}))
        decided = await hitl_service.decide(
            TenantScope(db, api.tenant),
            rita,
            approval_id,
            DecisionBody(decision=Decision.APPROVE),
            tools=context.tools,
        )
        assert decided.status == "approved"
        await asyncio.sleep(0.6)  # past the deadline, the decision not committed yet
        assert session_id not in await expiry.expire_due(conn)
        assert await _status(conn, approval_id) == "pending"  # (as others see it)
        await db.commit()
    assert session_id not in await expiry.expire_due(conn)
    assert await _status(conn, approval_id) == "approved"
    assert (await api.get(session_id))["status"] == "queued"


async def test_the_soonest_deadline_is_known_and_new_requests_are_announced(
    api: Api, conn: asyncpg.Connection
) -> None:
    announced: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(hitl_service.APPROVALS_CHANNEL, lambda *a: announced.put_nowait(a[3]))
    _, approval_id = await _parked_request(api, conn, timeout_seconds=2)
    async with asyncio.timeout(5):
        while not (await announced.get()).startswith(f"{approval_id}:"):
            pass
    expires_at = await conn.fetchval(
        "SELECT expires_at FROM approvals WHERE approval_id = $1", approval_id
    )
    soonest = await expiry.next_expiry_at(conn)
    assert soonest is not None and soonest <= expires_at


# -- the runtime's request ---------------------------------------------------------------------


async def test_a_request_is_made_once_per_call_and_only_for_the_tenants_session(
    api: Api, conn: asyncpg.Connection
) -> None:
    session_id, approval_id = await _parked_request(api, conn)
    again = await _request(conn, api.tenant, session_id, tool_use_id="toolu_1")
    assert again == approval_id
    count = await conn.fetchval("SELECT count(*) FROM approvals WHERE session_id = $1", session_id)
    assert count == 1
    with pytest.raises(LookupError):
        await _request(conn, f"{api.tenant}-b", session_id, tool_use_id="toolu_9")
    with pytest.raises(ValueError):
        await _request(conn, api.tenant, session_id, tool_use_id="toolu_8", gate="vibes")
    with pytest.raises(ValueError):
        await _request(conn, api.tenant, session_id, tool_use_id="toolu_8", on_timeout="ignore")


async def test_reviewers_are_notified_through_the_signed_outbox(
    api: Api, conn: asyncpg.Connection, context: AppContext
) -> None:
    async with serving(Receiver()) as receiver:
        # (the settings read creates the tenant and its signing secret)
        secret = (await api.http.get("/v1/webhooks/settings", headers=api.headers)).json()["secret"]
        await conn.execute(
            "UPDATE tenants SET webhook_url = $2 WHERE tenant_id = $1",
            api.tenant,
            receiver.url(f"/echo/{api.tenant}"),
        )
        session_id, approval_id = await _parked_request(api, conn)
        await _request(conn, api.tenant, session_id, tool_use_id="toolu_1")  # a replay: no 2nd
        rows = await conn.fetch(
            "SELECT event_type, payload::text FROM webhook_outbox WHERE session_id = $1",
            session_id,
        )
        assert [row["event_type"] for row in rows] == ["approval.requested"]

        dispatcher = WebhookDispatcher(WebhookSettings(), ["127.0.0.1"], batch_size=100)
        pool = await create_pool(context.database_url, max_size=2)
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                deadline = time.monotonic() + 10
                while not receiver.hits(f"/echo/{api.tenant}"):
                    assert time.monotonic() < deadline, "the notification was not delivered"
                    await dispatcher.dispatch_once(pool, http)
        finally:
            await pool.close()
    hit = receiver.hits(f"/echo/{api.tenant}")[0]
    payload = Webhook(secret).verify(hit.body, hit.headers)  # raises if not signed right
    assert payload["type"] == "approval.requested"
    approval = payload["data"]["approval"]
    assert approval["id"] == approval_id and approval["session_id"] == session_id
    assert approval["agent"] == "support" and approval["tool"] == "refund_order"
    assert approval["gate"] == "approval" and approval["link"] == f"/v1/approvals/{approval_id}"
    assert approval["expires_at"].endswith("Z")
    # The proposal itself (arguments, context, reasoning) stays behind the reviewer API.
    assert "arguments" not in approval and "ord_1001" not in hit.body.decode()


# -- listing -----------------------------------------------------------------------------------


async def test_the_list_is_oldest_first_filtered_and_paginated(
    api: Api, conn: asyncpg.Connection, reviewer: Callable[[str], dict[str, str]]
) -> None:
    made = [(await _parked_request(api, conn))[1] for _ in range(3)]
    await _decide(api.http, reviewer("rita"), made[1], decision="reject")
    rita = reviewer("rita")

    listed = (await api.http.get("/v1/approvals", headers=rita)).json()
    assert [item["id"] for item in listed["items"]] == made and listed["next_cursor"] is None
    pending = (await api.http.get("/v1/approvals?status=pending", headers=rita)).json()
    assert [item["id"] for item in pending["items"]] == [made[0], made[2]]
    page = (await api.http.get("/v1/approvals?limit=2", headers=rita)).json()
    assert [item["id"] for item in page["items"]] == made[:2]
    rest = (
        await api.http.get(f"/v1/approvals?limit=2&cursor={page['next_cursor']}", headers=rita)
    ).json()
    assert [item["id"] for item in rest["items"]] == made[2:] and rest["next_cursor"] is None
    assert (await api.http.get("/v1/approvals?status=maybe", headers=rita)).status_code == 422
    assert (await api.http.get("/v1/approvals?cursor=zz", headers=rita)).status_code == 422


async def test_the_openapi_document_describes_the_reviewer_api(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    decision = document["paths"]["/v1/approvals/{approval_id}/decision"]["post"]
    assert decision["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/DecisionBody"
    )
    assert {"200", "403", "404", "409", "410", "422"} <= set(decision["responses"])
    assert (
        "/v1/approvals" in document["paths"] and "/v1/approvals/{approval_id}" in document["paths"]
    )

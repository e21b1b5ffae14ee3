"""Tool results of several sessions written together: one statement, each session still
fenced on its own lease, every audit chain still verifies — and when the statement cannot
go through (a chain's head moved meanwhile), each result is written on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from app.api.context import AppContext
from app.observability import audit
from app.observability.audit import AuditAction, AuditRecord
from app.observability.audit_linking import ChainHead, SessionChain
from app.runtime.store import LeaseLost, PlannedCall, RuntimeStore, create_pool
from app.sessions import transitions
from tests.runtime_fixtures import Api, script

WORKER = "w-batching-test"


@pytest.fixture
async def pool(context: AppContext) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(context.database_url, max_size=4)
    yield created
    await created.close()


async def _running(
    api: Api, pool: asyncpg.Pool, store: RuntimeStore, n: int
) -> list[tuple[str, int, SessionChain]]:
    """`n` sessions running under WORKER, each with one tool call recorded `started`."""
    await api.create_agent(name="idle", **script({"text": "x"}))
    ids = [(await api.start("idle", f"s{i}"))["id"] for i in range(n)]
    running = []
    async with pool.acquire() as conn:
        for session_id in ids:
            epoch = await conn.fetchval(
                """UPDATE sessions SET status = 'running', worker_id = $1,
                          lease_epoch = lease_epoch + 1,
                          lease_expires_at = now() + interval '30 seconds'
                   WHERE session_id = $2 RETURNING lease_epoch""",
                WORKER,
                session_id,
            )
            head = await conn.fetchval("SELECT audit_chain_head($1, $2, 0)", api.tenant, session_id)
            running.append(
                (session_id, epoch, SessionChain(api.tenant, session_id, ChainHead.parse(head)))
            )
    for session_id, epoch, _ in running:
        await store.record_model_response(
            session_id,
            epoch,
            {"content": [], "stop_reason": "tool_use"},
            [PlannedCall("toolu_1", "lookup_order", {"order_id": "ord_1001"}, "started", True)],
            input_tokens=1,
            output_tokens=1,
            cost_usd=Decimal(0),
        )
    return running


def _result(
    store: RuntimeStore, tenant: str, session_id: str, epoch: int, chain: SessionChain
) -> Any:
    return store.record_tool_result(
        session_id,
        epoch,
        "toolu_1",
        status="succeeded",
        result={"order": session_id},
        error=None,
        attempts=1,
        event={"tool_use_id": "toolu_1", "tool": "lookup_order", "status": "succeeded"},
        audits=[
            AuditRecord(
                tenant, session_id, f"worker:{WORKER}", AuditAction.TOOL_CALL, {"n": session_id}
            )
        ],
        chain=chain,
    )


def _group_commit_writes(kind: str) -> tuple[float, float]:
    """(statements, writes) so far in the `agent_group_commit_writes` histogram."""
    labels = {"kind": kind}
    count = REGISTRY.get_sample_value("agent_group_commit_writes_count", labels) or 0.0
    return count, REGISTRY.get_sample_value("agent_group_commit_writes_sum", labels) or 0.0


async def _chains_verify(pool: asyncpg.Pool, tenant: str) -> None:
    async with pool.acquire() as conn:
        verified = await audit.verify(conn, tenant)
    assert verified.ok, verified


async def _ledger(pool: asyncpg.Pool, session_ids: list[str]) -> dict[str, tuple[str, int]]:
    rows = await pool.fetch(
        """SELECT c.session_id, c.status,
                  (SELECT count(*) FROM session_events e
                   WHERE e.session_id = c.session_id AND e.type = 'tool.result') AS events
           FROM tool_calls c WHERE c.session_id = ANY($1::text[])""",
        session_ids,
    )
    return {row["session_id"]: (row["status"], row["events"]) for row in rows}


async def test_results_of_several_sessions_go_in_one_statement_each_fenced(
    api: Api, pool: asyncpg.Pool
) -> None:
    store = RuntimeStore(pool)
    running = await _running(api, pool, store, 3)
    (first, e1, c1), (second, e2, c2), (gone, e3, c3) = running
    writes_before = _group_commit_writes("tool_result")
    outcomes = await asyncio.gather(
        _result(store, api.tenant, first, e1, c1),
        _result(store, api.tenant, second, e2, c2),
        _result(store, api.tenant, gone, e3 - 1, c3),  # its lease moved on
        return_exceptions=True,
    )
    assert outcomes[:2] == [None, None] and isinstance(outcomes[2], LeaseLost)
    assert store.tool_results.statements == 1
    # operators see it: one statement carried the three (`agent_group_commit_writes`)
    count, total = _group_commit_writes("tool_result")
    assert (count - writes_before[0], total - writes_before[1]) == (1, 3)
    assert await _ledger(pool, [first, second, gone]) == {
        first: ("succeeded", 1),
        second: ("succeeded", 1),
        gone: ("started", 0),
    }
    await _chains_verify(pool, api.tenant)
    heads = [
        await pool.fetchval("SELECT audit_chain_head($1, $2, 0)", api.tenant, session)
        for session in (first, second)
    ]
    # the worker's idea of each chain's head moved with its entry
    assert [c1.head, c2.head] == [ChainHead.parse(head) for head in heads]
    assert c1.head is not None and c1.head.seq == 2  # the session's creation, the call


async def test_a_chain_that_moved_sends_the_batch_one_by_one(api: Api, pool: asyncpg.Pool) -> None:
    store = RuntimeStore(pool)
    (first, e1, c1), (second, e2, c2) = await _running(api, pool, store, 2)
    async with pool.acquire() as conn:  # a reviewer's entry lands on `second`'s chain
        await audit.append(
            conn, [AuditRecord(api.tenant, second, "reviewer", AuditAction.APPROVAL_DECIDED)]
        )
    await asyncio.gather(
        _result(store, api.tenant, first, e1, c1), _result(store, api.tenant, second, e2, c2)
    )
    assert store.tool_results.statements == 0  # the batch was refused as a whole
    assert await _ledger(pool, [first, second]) == {
        first: ("succeeded", 1),
        second: ("succeeded", 1),
    }
    await _chains_verify(pool, api.tenant)


async def test_model_responses_of_several_sessions_go_in_one_statement(
    api: Api, pool: asyncpg.Pool
) -> None:
    store = RuntimeStore(pool)
    (first, e1, c1), (second, e2, c2), (gone, e3, c3) = await _running(api, pool, store, 3)

    def respond(session_id: str, epoch: int, chain: SessionChain) -> Any:
        return store.record_model_response(
            session_id,
            epoch,
            {"content": [], "stop_reason": "tool_use", "usage": {"output_tokens": 7}},
            [PlannedCall("toolu_2", "lookup_order", {"order_id": session_id}, "started", True)],
            input_tokens=5,
            output_tokens=7,
            cost_usd=Decimal("0.25"),
            audits=[
                AuditRecord(api.tenant, session_id, f"agent:{WORKER}", AuditAction.MODEL_CALL, {})
            ],
            chain=chain,
        )

    outcomes = await asyncio.gather(
        respond(first, e1, c1),
        respond(second, e2, c2),
        respond(gone, e3 - 1, c3),
        return_exceptions=True,
    )
    assert outcomes[:2] == [2, 2] and isinstance(outcomes[2], LeaseLost)  # their turns
    assert store.responses.statements == 1
    rows = await pool.fetch(
        """SELECT s.session_id, s.turns, s.input_tokens, s.cost_usd, c.turn, c.arguments::text
           FROM sessions s LEFT JOIN tool_calls c
             ON c.session_id = s.session_id AND c.tool_use_id = 'toolu_2'
           WHERE s.session_id = ANY($1::text[]) ORDER BY s.session_id""",
        [first, second, gone],
    )
    by_id = {row["session_id"]: row for row in rows}
    for session_id in (first, second):
        row = by_id[session_id]
        assert (row["turns"], row["input_tokens"], row["turn"]) == (2, 6, 2)
        assert row["cost_usd"] == Decimal("0.25")
        assert json.loads(row["arguments"]) == {"order_id": session_id}
    assert by_id[gone]["turns"] == 1 and by_id[gone]["turn"] is None
    await _chains_verify(pool, api.tenant)


async def test_completions_of_several_sessions_go_in_one_statement(
    api: Api, pool: asyncpg.Pool
) -> None:
    # Each completion is still fenced (a stale lease, or input queued behind the run: None,
    # nothing written for it) and whole: the final response and completed events, the
    # result, the tenant's slot given back, its webhook in the outbox, its audit entries.
    store = RuntimeStore(pool)
    running = await _running(api, pool, store, 4)
    (first, e1, c1), (second, e2, c2), (gone, e3, c3), (busy, e4, c4) = running
    ids = [first, second, gone, busy]
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE tenants SET claimed_sessions = claimed_sessions + 4 WHERE tenant_id = $1",
            api.tenant,
        )
        await conn.execute(
            "UPDATE sessions SET webhook_url = 'https://hooks.example/done' WHERE session_id = $1",
            first,
        )
        await conn.execute(
            """UPDATE sessions SET pending_inputs = '["more"]'::jsonb WHERE session_id = $1""",
            busy,
        )
    released = (
        "SELECT coalesce(sum(released), 0) FROM tenant_released_sessions WHERE tenant_id = $1"
    )
    released_before = await pool.fetchval(released, api.tenant)

    def complete(session_id: str, epoch: int, chain: SessionChain) -> Any:
        return transitions.complete_with_response(
            pool,
            chain,
            epoch=epoch,
            response={"content": [{"type": "text", "text": "done"}], "stop_reason": "end_turn"},
            input_tokens=3,
            output_tokens=4,
            cost_usd=Decimal("0.5"),
            result={"answer": session_id},
            model_call=AuditRecord(
                api.tenant, session_id, f"agent:{WORKER}", AuditAction.MODEL_CALL, {}
            ),
            batcher=store.completions,
        )

    outcomes = await asyncio.gather(
        complete(first, e1, c1),
        complete(second, e2, c2),
        complete(gone, e3 - 1, c3),
        complete(busy, e4, c4),
    )
    assert [outcome is not None for outcome in outcomes] == [True, True, False, False]
    assert store.completions.statements == 1
    rows = await pool.fetch(
        """SELECT s.session_id, s.status, s.result::text, s.worker_id, s.turns,
                  array(SELECT e.type::text FROM session_events e
                        WHERE e.session_id = s.session_id ORDER BY e.seq DESC LIMIT 2) AS last,
                  (SELECT count(*) FROM webhook_outbox o WHERE o.session_id = s.session_id)
                      AS webhooks
           FROM sessions s WHERE s.session_id = ANY($1::text[])""",
        ids,
    )
    by_id = {row["session_id"]: row for row in rows}
    for session_id in (first, second):
        row = by_id[session_id]
        assert (row["status"], row["worker_id"], row["turns"]) == ("completed", None, 2)
        assert json.loads(row["result"]) == {"answer": session_id}
        assert row["last"] == ["session.completed", "model.response"]
    assert (by_id[first]["webhooks"], by_id[second]["webhooks"]) == (1, 0)
    for session_id in (gone, busy):
        assert (by_id[session_id]["status"], by_id[session_id]["webhooks"]) == ("running", 0)
    assert await pool.fetchval(released, api.tenant) - released_before == 2
    await _chains_verify(pool, api.tenant)
    head = await pool.fetchval("SELECT audit_chain_head($1, $2, 0)", api.tenant, first)
    assert c1.head == ChainHead.parse(head) and c1.head is not None and c1.head.seq == 3

"""The audit log on the real database: appends chain (one statement per batch, no fork
under concurrency), the database refuses changes, verification names the first tampered
entry (row, payload or deletion), erasure keeps the chain verifiable, secrets never reach
a row, and the admin API lists and verifies within the caller's tenant."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.api.context import AppContext
from app.observability import audit, audit_linking
from app.observability.audit import AuditAction, AuditRecord
from app.runtime.store import asyncpg_dsn
from tests.conftest import TokenFactory, bearer

Connect = Callable[[], Awaitable[asyncpg.Connection]]
PROBLEM = "application/problem+json"


@pytest.fixture
async def connect(database_url: str) -> AsyncIterator[Connect]:
    """Open asyncpg connections to the test database (as the application connects); all are
    closed at the end of the test."""
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


@pytest.fixture
async def conn(connect: Connect) -> asyncpg.Connection:
    return await connect()


def _session_id() -> str:
    return f"ses_{uuid.uuid4().hex}"


def _record(
    tenant: str, session_id: str | None, n: int, action: AuditAction = AuditAction.TOOL_CALL
) -> AuditRecord:
    return AuditRecord(tenant, session_id, "worker:w1", action, {"n": n, "tool": "lookup"})


async def _append(conn: asyncpg.Connection, records: list[AuditRecord]) -> list[int]:
    async with conn.transaction():
        return await audit.append(conn, records)


async def _chain(
    conn: asyncpg.Connection, tenant: str, session_id: str | None
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM audit_log WHERE tenant_id = $1 AND session_id IS NOT DISTINCT FROM $2"
            " ORDER BY chain_seq",
            tenant,
            session_id,
        )
    )


async def _behind_the_back(conn: asyncpg.Connection, statement: str, *args: Any) -> None:
    """Run `statement` as the database owner with triggers off (replica role), as someone
    with direct database access would tamper with the log."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(statement, *args)


# --- Append and chain links -------------------------------------------------------------------


async def test_appends_chain_per_session_and_per_tenant(
    conn: asyncpg.Connection, tenant: str
) -> None:
    first, second = _session_id(), _session_id()
    ids = await _append(conn, [_record(tenant, first, 1), _record(tenant, None, 2)])
    ids += await _append(
        conn, [_record(tenant, first, 3), _record(tenant, second, 4), _record(tenant, None, 5)]
    )
    assert ids == sorted(ids) and len(set(ids)) == 5

    for session_id, expected_ns in ((first, [1, 3]), (second, [4]), (None, [2, 5])):
        rows = await _chain(conn, tenant, session_id)
        assert [row["chain_seq"] for row in rows] == list(range(1, len(expected_ns) + 1))
        assert rows[0]["prev_hash"] == audit.GENESIS_HASH
        for previous, row in itertools.pairwise(rows):
            assert row["prev_hash"] == previous["entry_hash"]
        for row, n in zip(rows, expected_ns, strict=True):
            payload = await conn.fetchval(
                "SELECT payload::text FROM audit_payloads WHERE audit_id = $1", row["audit_id"]
            )
            assert json.loads(payload) == {"n": n, "tool": "lookup"}
            assert row["payload_hash"] == audit.payload_hash(json.loads(payload))

    assert await audit.verify(conn, tenant) == audit.VerifyResult(
        ok=True, checked=5, first_bad_id=None
    )


async def test_the_entry_hash_is_the_documented_encoding(
    conn: asyncpg.Connection, tenant: str
) -> None:
    session_id = _session_id()
    payload = {"b": [1, 2.5, "é"], "a": None}
    [audit_id] = await _append(
        conn, [AuditRecord(tenant, session_id, "user:alice", AuditAction.POLICY_DECISION, payload)]
    )
    row = await conn.fetchrow("SELECT * FROM audit_log WHERE audit_id = $1", audit_id)
    assert row is not None

    # docs/audit.md, by hand: canonical JSON, then netstrings of the fields, SHA-256 in hex.
    canonical = '{"a":null,"b":[1,2.5,"é"]}'
    assert row["payload_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    created = row["created_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields = [
        "audit/v1", tenant, session_id, "1", "user:alice", "policy.decision", created,
        row["payload_hash"], "0" * 64,
    ]  # fmt: skip
    encoded = b"".join(b"%d:%s," % (len(f.encode()), f.encode()) for f in fields)
    assert row["entry_hash"] == hashlib.sha256(encoded).hexdigest()


async def test_a_batch_is_one_statement_whatever_its_size(
    conn: asyncpg.Connection, tenant: str
) -> None:
    session_id = _session_id()
    await _append(conn, [_record(tenant, session_id, 0)])  # prepared once per connection
    statements: list[str] = []
    conn.add_query_logger(lambda query: statements.append(query.query))
    async with conn.transaction():
        statements.clear()
        await audit.append(conn, [_record(tenant, session_id, n) for n in range(1, 11)])
        assert len(statements) == 1
        await audit.append(conn, [_record(tenant, session_id, 11)])
        assert len(statements) == 2
    assert (await audit.verify(conn, tenant)).checked == 12


async def test_api_code_appends_in_its_sqlalchemy_transaction(
    context: AppContext, conn: asyncpg.Connection, tenant: str
) -> None:
    session_id = _session_id()
    async with context.session_factory() as db:
        await audit.append(db, [_record(tenant, session_id, 1)])
        await db.rollback()  # nothing of it stays
    async with context.session_factory() as db:
        ids = await audit.append(db, [_record(tenant, session_id, 2), _record(tenant, None, 3)])
        await db.commit()
    rows = await _chain(conn, tenant, session_id)
    assert [row["audit_id"] for row in rows] == ids[:1] and rows[0]["chain_seq"] == 1
    async with context.session_factory() as db:
        assert await audit.verify(db, tenant) == audit.VerifyResult(
            ok=True, checked=2, first_bad_id=None
        )


async def test_concurrent_appends_to_one_chain_stay_one_line(connect: Connect, tenant: str) -> None:
    session_id = _session_id()
    connections = [await connect() for _ in range(20)]
    start = asyncio.Event()

    async def writer(conn: asyncpg.Connection, n: int) -> None:
        await start.wait()
        async with conn.transaction():
            await audit.append(conn, [_record(tenant, session_id, n), _record(tenant, None, n)])
            await asyncio.sleep(0.005)  # hold the chain while others queue on it
            await audit.append(conn, [_record(tenant, session_id, n + 100)])

    tasks = [asyncio.create_task(writer(c, n)) for n, c in enumerate(connections)]
    start.set()
    await asyncio.gather(*tasks)

    for chain, length in ((session_id, 40), (None, 20)):
        rows = await _chain(connections[0], tenant, chain)
        assert [row["chain_seq"] for row in rows] == list(range(1, length + 1))
        assert len({row["prev_hash"] for row in rows}) == length  # no two share a parent
        for previous, row in itertools.pairwise(rows):
            assert row["prev_hash"] == previous["entry_hash"]
    assert await audit.verify(connections[0], tenant) == audit.VerifyResult(
        ok=True, checked=60, first_bad_id=None
    )


# --- The database refuses changes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'mallory' WHERE audit_id = $1",
        "DELETE FROM audit_log WHERE audit_id = $1",
        "TRUNCATE audit_log, audit_payloads",
        "UPDATE audit_payloads SET payload = '{}' WHERE audit_id = $1",
        "TRUNCATE audit_payloads",
    ],
)
async def test_the_database_refuses_changes_from_the_application(
    conn: asyncpg.Connection, tenant: str, statement: str
) -> None:
    [audit_id] = await _append(conn, [_record(tenant, _session_id(), 1)])
    args = [audit_id] if "$1" in statement else []
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="refused"):
        async with conn.transaction():
            await conn.execute(statement, *args)
    assert await conn.fetchval("SELECT actor FROM audit_log WHERE audit_id = $1", audit_id) == (
        "worker:w1"
    )
    assert (await audit.verify(conn, tenant)).ok


# --- Verification names the first tampered entry ------------------------------------------------


async def _three_chains(conn: asyncpg.Connection, tenant: str) -> tuple[list[int], list[int]]:
    """Two sessions of 4 entries and a tenant chain of 2, interleaved; (ids of the first
    session's chain, all ids)."""
    first, second = _session_id(), _session_id()
    ids: list[int] = []
    for n in range(4):
        ids += await _append(
            conn,
            [_record(tenant, first, n), _record(tenant, second, n)]
            + ([_record(tenant, None, n)] if n % 2 else []),
        )
    return [row["audit_id"] for row in await _chain(conn, tenant, first)], ids


@pytest.mark.parametrize("batch_rows", [audit.VERIFY_BATCH_ROWS, 3])
async def test_verify_names_a_row_altered_behind_the_applications_back(
    conn: asyncpg.Connection, tenant: str, batch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "VERIFY_BATCH_ROWS", batch_rows)  # walk across batch edges too
    chain, ids = await _three_chains(conn, tenant)
    assert await audit.verify(conn, tenant) == audit.VerifyResult(
        ok=True, checked=10, first_bad_id=None
    )

    await _behind_the_back(
        conn, "UPDATE audit_log SET actor = 'mallory' WHERE audit_id = $1", chain[2]
    )
    assert await audit.verify(conn, tenant) == audit.VerifyResult(
        ok=False, checked=10, first_bad_id=chain[2]
    )
    await _behind_the_back(conn, "UPDATE audit_log SET action = 'x' WHERE audit_id = $1", ids[-1])
    assert (await audit.verify(conn, tenant)).first_bad_id == chain[2]  # still the lowest
    await _behind_the_back(conn, "UPDATE audit_log SET action = 'x' WHERE audit_id = $1", ids[0])
    assert (await audit.verify(conn, tenant)).first_bad_id == ids[0]


async def test_verify_names_the_next_row_when_the_altered_one_is_rehashed(
    conn: asyncpg.Connection, tenant: str
) -> None:
    chain, _ = await _three_chains(conn, tenant)
    row = await conn.fetchrow("SELECT * FROM audit_log WHERE audit_id = $1", chain[1])
    assert row is not None
    forged = audit.entry_hash(
        tenant_id=tenant, session_id=row["session_id"], chain_seq=row["chain_seq"],
        actor="mallory", action=row["action"], created_at=row["created_at"],
        payload_hash=row["payload_hash"], prev_hash=row["prev_hash"],
    )  # fmt: skip
    await _behind_the_back(
        conn,
        "UPDATE audit_log SET actor = 'mallory', entry_hash = $2 WHERE audit_id = $1",
        chain[1],
        forged,
    )
    assert (await audit.verify(conn, tenant)).first_bad_id == chain[2]  # its link breaks


async def test_verify_names_the_row_after_a_deleted_one(
    conn: asyncpg.Connection, tenant: str
) -> None:
    chain, _ = await _three_chains(conn, tenant)
    await _behind_the_back(conn, "DELETE FROM audit_payloads WHERE audit_id = $1", chain[1])
    await _behind_the_back(conn, "DELETE FROM audit_log WHERE audit_id = $1", chain[1])
    assert await audit.verify(conn, tenant) == audit.VerifyResult(
        ok=False, checked=9, first_bad_id=chain[2]
    )


async def test_verify_names_an_entry_whose_payload_was_edited(
    conn: asyncpg.Connection, tenant: str
) -> None:
    chain, _ = await _three_chains(conn, tenant)
    await _behind_the_back(
        conn,
        """UPDATE audit_payloads SET payload = jsonb_set(payload, '{tool}', '"refund"')
           WHERE audit_id = $1""",
        chain[3],
    )
    assert (await audit.verify(conn, tenant)).first_bad_id == chain[3]


# --- Erasure --------------------------------------------------------------------------------------


async def test_erasing_a_sessions_payloads_keeps_the_chain_verifiable(
    conn: asyncpg.Connection, tenant: str
) -> None:
    chain, ids = await _three_chains(conn, tenant)
    session_id = await conn.fetchval(
        "SELECT session_id FROM audit_log WHERE audit_id = $1", chain[0]
    )

    async with conn.transaction():
        erased = await audit.erase_session_payloads(
            conn, tenant_id=tenant, session_id=session_id, actor="user:admin"
        )
    assert erased == 4
    gone = await conn.fetchval(
        "SELECT count(*) FROM audit_payloads WHERE audit_id = ANY($1::bigint[])", chain
    )
    assert gone == 0
    rows = await _chain(conn, tenant, session_id)
    assert [row["action"] for row in rows][-1] == "session.erased"
    assert json.loads(
        await conn.fetchval(
            "SELECT payload::text FROM audit_payloads WHERE audit_id = $1", rows[-1]["audit_id"]
        )
    ) == {"payloads_erased": 4}
    assert await audit.verify(conn, tenant) == audit.VerifyResult(
        ok=True, checked=len(ids) + 1, first_bad_id=None
    )

    # A payload deleted behind the application's back has no erasure to account for it.
    other = next(i for i in ids if i not in chain)
    await _behind_the_back(conn, "DELETE FROM audit_payloads WHERE audit_id = $1", other)
    assert (await audit.verify(conn, tenant)).first_bad_id == other


# --- Secrets and payload normalisation -------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "Authorization", "api_key", "apiKey", "X-Api-Key", "XApiKey", "token", "access_token",
        "refreshToken", "client_secret", "password", "credentials", "Cookie", "set-cookie",
        "private_key",
    ],
)  # fmt: skip
def test_credential_key_names_are_secret(key: str) -> None:
    assert audit.is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["input_tokens", "max_tokens", "tool", "keys", "author", "monkey", "tokenizer"]
)
def test_ordinary_key_names_are_not_secret(key: str) -> None:
    assert not audit.is_secret_key(key)


async def test_secrets_are_scrubbed_before_hashing_and_writing(
    conn: asyncpg.Connection, tenant: str
) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    payload = {
        "tool": "http_get",
        "headers": {"Authorization": "Bearer abc.def.ghi", "X-Api-Key": "k-123", "Accept": "*/*"},
        "arguments": {"nested": [{"password": "hunter2", "query": "refund 42"}]},
        "note": f"called with Bearer s3cr3t-t0ken-value and {jwt}",
        "model": {"key": "sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA", "input_tokens": 12},
        "url": "https://bob:pa55word@example.com/x",
        "dump": "GET /x HTTP/1.1\r\nAuthorization: Basic Ym9iOnBhNTV3b3Jk\r\nAccept: */*",
        "prose": "a basic understanding of bearer bonds and tokens",
    }
    [audit_id] = await _append(
        conn, [AuditRecord(tenant, None, "worker:w1", AuditAction.TOOL_CALL, payload)]
    )
    stored_text = await conn.fetchval(
        "SELECT payload::text FROM audit_payloads WHERE audit_id = $1", audit_id
    )
    for secret in (
        "abc.def.ghi", "k-123", "hunter2", "s3cr3t-t0ken-value", jwt, "sk-ant", "pa55word",
        "Ym9iOnBhNTV3b3Jk",
    ):  # fmt: skip
        assert secret not in stored_text
    stored = json.loads(stored_text)
    assert stored["headers"] == {
        "Authorization": "[redacted]", "X-Api-Key": "[redacted]", "Accept": "*/*",
    }  # fmt: skip
    assert stored["arguments"] == {"nested": [{"password": "[redacted]", "query": "refund 42"}]}
    assert stored["note"] == "called with Bearer [redacted] and [redacted]"
    assert stored["model"] == {"key": "[redacted]", "input_tokens": 12}
    assert stored["url"] == "https://bob:[redacted]@example.com/x"
    assert stored["dump"] == "GET /x HTTP/1.1\r\nAuthorization: [redacted]\r\nAccept: */*"
    assert stored["prose"] == payload["prose"]
    row_hash = await conn.fetchval(
        "SELECT payload_hash FROM audit_log WHERE audit_id = $1", audit_id
    )
    assert row_hash == audit.payload_hash(stored)  # the hash is of what was written


async def test_awkward_payload_values_round_trip_and_verify(
    conn: asyncpg.Connection, tenant: str
) -> None:
    payload: dict[Any, Any] = {
        "big": 1e20, "small": 1e-7, "third": 0.1 + 0.2, "whole": 2.0, "nan": float("nan"),
        "nul": "a\x00b", "surrogate": "x\ud800y", "when": datetime(2026, 1, 2, tzinfo=UTC),
        "ids": (1, 2), 3: "int key", "huge": 10**30,
    }  # fmt: skip
    [audit_id] = await _append(
        conn, [AuditRecord(tenant, None, "system", AuditAction.MODEL_CALL, payload)]
    )
    stored = json.loads(
        await conn.fetchval(
            "SELECT payload::text FROM audit_payloads WHERE audit_id = $1", audit_id
        )
    )
    assert stored["big"] == 10**20 and stored["whole"] == 2 and stored["nan"] == "nan"
    assert stored["third"] == 0.1 + 0.2 and stored["small"] == 1e-7
    assert stored["nul"] == "a\ufffdb" and stored["surrogate"] == "x\ufffdy"
    assert stored["when"] == "2026-01-02T00:00:00+00:00" and stored["ids"] == [1, 2]
    assert stored["3"] == "int key" and stored["huge"] == 10**30
    assert (await audit.verify(conn, tenant)).ok


# --- The admin API ----------------------------------------------------------------------------------


async def test_admin_lists_entries_with_filters_and_cursor(
    client: httpx.AsyncClient, conn: asyncpg.Connection, tenant: str, make_token: TokenFactory
) -> None:
    session_id = _session_id()
    ids = await _append(
        conn,
        [_record(tenant, session_id, n) for n in range(3)]
        + [_record(tenant, session_id, 3, AuditAction.SESSION_STATUS)]
        + [_record(tenant, None, 4, AuditAction.AGENT_DISABLED)],
    )
    await _append(conn, [_record(f"{tenant}-other", session_id, 9)])  # another tenant's
    headers = bearer(make_token(tenant, sub="root", roles=("admin",)))

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/audit", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["items"]
        if not (cursor := page["next_cursor"]):
            break
    assert [item["id"] for item in seen] == ids[::-1]  # newest first, each once
    newest = seen[0]
    assert newest["tenant"] == tenant and newest["session_id"] is None
    assert newest["action"] == "agent.disabled" and newest["actor"] == "worker:w1"
    assert newest["payload"] == {"n": 4, "tool": "lookup"}
    assert newest["prev_hash"] == audit.GENESIS_HASH and len(newest["entry_hash"]) == 64
    assert newest["payload_hash"] == audit.payload_hash(newest["payload"])

    async def listed(**params: Any) -> list[int]:
        response = await client.get("/v1/audit", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await listed(session_id=session_id) == ids[3::-1]
    assert await listed(session_id=session_id, action="session.status") == [ids[3]]
    assert await listed(action="tool.call") == ids[2::-1]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await listed(since=future) == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert await listed(since=past) == ids[::-1]

    async with conn.transaction():
        await audit.erase_session_payloads(
            conn, tenant_id=tenant, session_id=session_id, actor="user:root"
        )
    response = await client.get("/v1/audit", params={"session_id": session_id}, headers=headers)
    items = response.json()["items"]
    assert items[0]["action"] == "session.erased"
    assert [item["payload"] for item in items[1:]] == [None] * 4


async def test_other_tenants_entries_are_invisible(
    client: httpx.AsyncClient, conn: asyncpg.Connection, tenant: str, make_token: TokenFactory
) -> None:
    session_id = _session_id()
    await _append(conn, [_record(tenant, session_id, 1), _record(tenant, None, 2)])
    other = bearer(make_token(f"{tenant}-x", sub="root", roles=("admin",)))
    response = await client.get("/v1/audit", params={"session_id": session_id}, headers=other)
    assert response.status_code == 200 and response.json()["items"] == []
    response = await client.get("/v1/audit", headers=other)
    assert response.json() == {"items": [], "next_cursor": None}
    response = await client.get("/v1/audit/verify", headers=other)
    assert response.json() == {"ok": True, "checked": 0, "first_bad_id": None}


@pytest.mark.parametrize("roles", [("client",), ("reviewer",), ("client", "reviewer")])
async def test_non_admins_are_refused(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory, roles: tuple[str, ...]
) -> None:
    headers = bearer(make_token(tenant, roles=roles))
    for path in ("/v1/audit", "/v1/audit/verify"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 403
        assert response.headers["content-type"].startswith(PROBLEM)
    assert (await client.get("/v1/audit")).status_code == 401


@pytest.mark.parametrize(
    "params",
    [
        {"action": "tool.nope"},
        {"since": "2026-01-01T00:00:00"},  # no time zone
        {"since": "yesterday"},
        {"limit": 0},
        {"limit": 201},
        {"cursor": "abc"},
        {"cursor": "-5"},
        {"cursor": "9" * 30},
        {"cursor": str(2**63)},
        {"session_id": "s" * 41},
    ],
)
async def test_bad_query_parameters_are_422_problems(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory, params: dict[str, Any]
) -> None:
    headers = bearer(make_token(tenant, roles=("admin",)))
    response = await client.get("/v1/audit", params=params, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["status"] == 422


async def test_the_verify_endpoint_reports_the_first_bad_entry(
    client: httpx.AsyncClient, conn: asyncpg.Connection, tenant: str, make_token: TokenFactory
) -> None:
    headers = bearer(make_token(tenant, sub="root", roles=("admin",)))
    chain, ids = await _three_chains(conn, tenant)
    response = await client.get("/v1/audit/verify", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "checked": len(ids), "first_bad_id": None}

    await _behind_the_back(
        conn,
        "UPDATE audit_log SET created_at = created_at - interval '1 day' WHERE audit_id = $1",
        chain[1],
    )
    response = await client.get("/v1/audit/verify", headers=headers)
    assert response.json() == {"ok": False, "checked": len(ids), "first_bad_id": chain[1]}


# --- Entries linked by the worker holding the session's lease --------------------------------


def _linked_statement() -> str:
    """A stand-in for a worker's step statement: a one-row CTE `s` that takes the chain's
    lock (as the fenced UPDATE does), then the linked entries."""
    lock = audit_linking.CHAIN_LOCK_SQL.format(tenant="$1", session="$2")
    ctes = audit_linking.linked_insert_ctes("s", "$1", "$2", 3)
    return f"WITH s AS (SELECT 1 AS one, {lock} AS chain_locked), {ctes} SELECT one FROM s"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=12)
    assert created is not None
    yield created
    await created.close()


async def test_a_stale_head_is_read_again_and_the_linked_entries_retried(
    pool: asyncpg.Pool, conn: asyncpg.Connection, tenant: str
) -> None:
    session_id = _session_id()
    await _append(conn, [_record(tenant, session_id, 1), _record(tenant, session_id, 2)])
    head = (await _chain(conn, tenant, session_id))[-1]
    chain = audit_linking.SessionChain(
        tenant, session_id, audit_linking.ChainHead(2, head["entry_hash"])
    )
    await _append(conn, [_record(tenant, session_id, 3)])  # behind the worker's back

    row = await audit_linking.write_linked(
        pool,
        _linked_statement(),
        (tenant, session_id),
        [_record(tenant, session_id, 4), _record(tenant, session_id, 5)],
        chain,
    )

    assert row is not None
    rows = await _chain(conn, tenant, session_id)
    assert [r["chain_seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert chain.head == audit_linking.ChainHead(5, rows[-1]["entry_hash"])
    assert await audit.verify(conn, tenant) == audit.VerifyResult(
        ok=True, checked=5, first_bad_id=None
    )


async def test_a_lease_holder_linking_and_other_appenders_keep_one_line(
    pool: asyncpg.Pool, connect: Connect, tenant: str
) -> None:
    """The worker links 20 steps of 2 entries while 8 other connections append through
    audit_append() to the same chain: no fork, no gap, every entry verifies."""
    session_id = _session_id()
    chain = audit_linking.SessionChain(
        tenant, session_id, audit_linking.ChainHead(0, audit.GENESIS_HASH)
    )
    others = [await connect() for _ in range(8)]

    async def lease_holder() -> None:
        for step in range(20):
            records = [_record(tenant, session_id, 1000 + 2 * step + i) for i in range(2)]
            assert await audit_linking.write_linked(
                pool, _linked_statement(), (tenant, session_id), records, chain
            )

    async def other(conn: asyncpg.Connection, n: int) -> None:
        for k in range(5):
            await _append(conn, [_record(tenant, session_id, n * 10 + k)])
            await asyncio.sleep(0.001)

    await asyncio.gather(lease_holder(), *(other(c, n) for n, c in enumerate(others)))

    rows = await _chain(others[0], tenant, session_id)
    assert [r["chain_seq"] for r in rows] == list(range(1, 81))
    for previous, row in itertools.pairwise(rows):
        assert row["prev_hash"] == previous["entry_hash"]
    assert await audit.verify(others[0], tenant) == audit.VerifyResult(
        ok=True, checked=80, first_bad_id=None
    )

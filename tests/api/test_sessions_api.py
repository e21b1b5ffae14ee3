"""Sessions over HTTP: create (202 queued) with Idempotency-Key, bad input that writes
nothing, tenant isolation on every route, listing with filters and cursors, cancel, roles."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.api.context import AppContext
from app.api.models import IdempotencyKey
from app.main import create_app
from app.runtime.worker import WorkerPool
from app.sessions import service as sessions_service
from app.sessions.models import Session
from app.settings import ApiSettings, RuntimeSettings
from app.tenants.scoping import TenantScope
from tests.conftest import TokenFactory, bearer, client_for, make_settings

PROBLEM = "application/problem+json"
FAST_RUNTIME = RuntimeSettings(
    lease_ttl_seconds=3,
    heartbeat_interval_seconds=0.5,
    reaper_interval_seconds=0.5,
    poll_interval_seconds=0.5,
    shutdown_grace_seconds=5,
)


def _headers(
    make_token: TokenFactory, tenant: str, *roles: str, key: str | None = None
) -> dict[str, str]:
    headers = bearer(make_token(tenant, sub="app", roles=roles or ("client",)))
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def _rows(context: AppContext, tenant: str) -> tuple[int, int]:
    """(sessions, idempotency keys) of `tenant`, counted in the database."""
    async with context.session_factory() as db:
        sessions = await db.scalar(
            select(func.count()).select_from(Session).where(Session.tenant_id == tenant)
        )
        keys = await db.scalar(
            select(func.count())
            .select_from(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == tenant)
        )
    return int(sessions or 0), int(keys or 0)


async def _create(
    http: httpx.AsyncClient, headers: dict[str, str], agent: str = "support", **extra: Any
) -> dict[str, Any]:
    body = {"agent": agent, "input": {"order_id": "ord_1001", "amount": 5}, **extra}
    response = await http.post("/v1/sessions", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def _create_agent(
    http: httpx.AsyncClient, tenant: str, make_token: TokenFactory, name: str, **definition: Any
) -> None:
    response = await http.post(
        "/v1/agents",
        json={"name": name, **definition},
        headers=_headers(make_token, tenant, "admin"),
    )
    assert response.status_code == 201, response.text


def _assert_problem(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status
    if code is not None:
        assert problem["type"].endswith(f"/{code}"), problem


@pytest.fixture(autouse=True)
async def _cancel_leftover_sessions(context: AppContext, tenant: str) -> AsyncIterator[None]:
    """Sessions these tests leave queued must not be run by a later test's worker pool."""
    yield
    async with context.session_factory.begin() as db:
        rows = await db.execute(
            select(Session.tenant_id, Session.session_id).where(
                Session.tenant_id.startswith(tenant), Session.status == "queued"
            )
        )
        for tenant_id, session_id in rows.all():
            await sessions_service.cancel(TenantScope(db, tenant_id), session_id)


# -- create ------------------------------------------------------------------------------------


async def test_create_returns_202_queued_without_a_worker(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant)
    response = await client.post(
        "/v1/sessions",
        json={
            "agent": "support",
            "input": {"order_id": "ord_1001"},
            "metadata": {"ticket": 7},
            "priority": 5,
        },
        headers=headers,
    )
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued"
    assert created["id"] and created["agent"] == "support" and created["agent_version"] >= 1
    assert created["input"] == {"order_id": "ord_1001"}
    assert created["metadata"] == {"ticket": 7} and created["priority"] == 5
    assert created["result"] is None and created["error"] is None
    assert created["usage"] == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    assert created["finished_at"] is None and created["cancel_requested"] is False
    assert "Idempotent-Replayed" not in response.headers

    read = await client.get(f"/v1/sessions/{created['id']}", headers=headers)
    assert read.status_code == 200
    assert read.json() == created
    assert await _rows(context, tenant) == (1, 0)


async def test_create_with_a_pinned_agent_version(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    await _create_agent(client, tenant, make_token, "pinned", description="v1")
    await _create_agent(client, tenant, make_token, "pinned", description="v2")
    headers = _headers(make_token, tenant)
    assert (await _create(client, headers, "pinned"))["agent_version"] == 2
    assert (await _create(client, headers, "pinned", version=1))["agent_version"] == 1


async def test_the_session_is_committed_before_the_202_is_sent(
    app: FastAPI, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    # Driven as raw ASGI: httpx's ASGITransport waits for the whole app, so it cannot see
    # what a real client can: a 202 for a session it cannot read yet, or one that is lost
    # when the commit then fails.
    body = json.dumps({"agent": "support", "input": "hello"}).encode()
    token = make_token(tenant)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/sessions", "raw_path": b"/v1/sessions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("test", 80), "state": {},
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
    }  # fmt: skip
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    rows_when_sent: list[tuple[int, int]] = []
    statuses: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
            rows_when_sent.append(await _rows(context, tenant))

    await app(scope, receive, send)
    assert statuses == [202]
    assert await _rows(context, tenant) == (1, 0)
    assert rows_when_sent == [(1, 0)]


async def test_the_openapi_document_describes_the_202_body(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    accepted = document["paths"]["/v1/sessions"]["post"]["responses"]["202"]
    schema = accepted["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/SessionView"}
    assert {"id", "status", "agent_version"} <= set(
        document["components"]["schemas"]["SessionView"]["properties"]
    )


# -- Idempotency-Key ---------------------------------------------------------------------------


async def test_replay_with_the_same_key_and_body_returns_the_original_response(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant, key="order-1001-refund")
    body = {"agent": "support", "input": {"order_id": "ord_1001", "amount": 5}}
    first = await client.post("/v1/sessions", json=body, headers=headers)
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    # Something changes in between: the replay still answers with the original response.
    cancelled = await client.post(f"/v1/sessions/{first.json()['id']}/cancel", headers=headers)
    assert cancelled.json()["status"] == "cancelled"

    replay = await client.post("/v1/sessions", json=body, headers=headers)
    assert replay.status_code == first.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert replay.json()["status"] == "queued"
    assert await _rows(context, tenant) == (1, 1)


async def test_same_key_with_a_different_body_is_409(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant, key="k-1")
    await _create(client, headers, input={"order_id": "ord_1001"})
    different = {"agent": "support", "input": {"order_id": "ord_1002"}}
    reused = await client.post("/v1/sessions", json=different, headers=headers)
    _assert_problem(reused, 409, "idempotency-key-reused")
    assert await _rows(context, tenant) == (1, 1)


async def test_an_idempotency_key_belongs_to_one_tenant(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    mine = await _create(client, _headers(make_token, tenant, key="shared"))
    theirs = await _create(client, _headers(make_token, f"{tenant}-b", key="shared"))
    assert mine["id"] != theirs["id"]
    assert await _rows(context, tenant) == (1, 1)
    assert await _rows(context, f"{tenant}-b") == (1, 1)


async def test_concurrent_duplicates_with_one_key_create_one_session(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant, key="burst")
    body = {"agent": "support", "input": {"order_id": "ord_1003", "amount": 1}}
    responses = await asyncio.gather(
        *(client.post("/v1/sessions", json=body, headers=headers) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert await _rows(context, tenant) == (1, 1)


async def test_an_idempotency_key_over_255_characters_is_422(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    response = await client.post(
        "/v1/sessions",
        json={"agent": "support", "input": "hello"},
        headers=_headers(make_token, tenant, key="k" * 300),
    )
    _assert_problem(response, 422)
    assert "Idempotency-Key" in response.json()["detail"]
    assert await _rows(context, tenant) == (0, 0)


async def test_a_failed_create_does_not_use_up_its_key(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant, key="early")
    body = {"agent": "late", "input": "hello"}
    _assert_problem(await client.post("/v1/sessions", json=body, headers=headers), 404)
    await _create_agent(client, tenant, make_token, "late")
    retried = await client.post("/v1/sessions", json=body, headers=headers)
    assert retried.status_code == 202, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert await _rows(context, tenant) == (1, 1)


# -- bad input: a clear 4xx and nothing written -------------------------------------------------

_VALID = json.dumps({"agent": "support", "input": "hello"})
BAD_REQUESTS: dict[str, tuple[Any, dict[str, str], int, str, str | None]] = {
    # case: (body as JSON value or raw bytes, extra headers, status, problem code, field)
    "unknown agent": (
        {"agent": "no-such-agent", "input": "hi"}, {}, 404, "agent-not-found", None,
    ),
    "unknown agent version": (
        {"agent": "support", "version": 999, "input": "hi"}, {}, 404, "agent-not-found", None,
    ),
    "malformed JSON": (b'{"agent": "support", "input": ', {}, 400, "malformed-json", None),
    "input is a number": ({"agent": "support", "input": 5}, {}, 422, "validation-error", "input"),
    "input is a list": (
        {"agent": "support", "input": [1, 2]}, {}, 422, "validation-error", "input",
    ),
    "input is blank": ({"agent": "support", "input": "  "}, {}, 422, "validation-error", "input"),
    "input missing": ({"agent": "support"}, {}, 422, "validation-error", "input"),
    "priority is a word": (
        {"agent": "support", "input": "hi", "priority": "high"}, {}, 422, "validation-error",
        "priority",
    ),
    "priority out of range": (
        {"agent": "support", "input": "hi", "priority": 1000}, {}, 422, "validation-error",
        "priority",
    ),
    "agent name not a name": (
        {"agent": "Bad Name!", "input": "hi"}, {}, 422, "validation-error", "agent",
    ),
    "unknown top-level field": (
        {"agent": "support", "input": "hi", "prio": 1}, {}, 422, "validation-error", "prio",
    ),
    "oversize text input": (
        {"agent": "support", "input": "x" * (256 * 1024 + 1)}, {}, 422, "validation-error",
        "input",
    ),
    "oversize object input": (
        {"agent": "support", "input": {"blob": "x" * (256 * 1024)}}, {}, 422,
        "validation-error", "input",
    ),
    "body is a JSON array": (b"[1, 2]", {}, 422, "validation-error", None),
    "no Content-Type": (_VALID.encode(), {"Content-Type": ""}, 422, "validation-error", None),
    "text/plain Content-Type": (
        _VALID.encode(), {"Content-Type": "text/plain"}, 422, "validation-error", None,
    ),
    "not JSON at all": (b"agent=support&input=hi", {}, 400, "malformed-json", None),
    "empty body": (b"", {}, 422, "validation-error", None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    case: str,
    client: httpx.AsyncClient,
    context: AppContext,
    tenant: str,
    make_token: TokenFactory,
) -> None:
    body, extra_headers, status, code, field = BAD_REQUESTS[case]
    # One good session first, so the counts below are counts of something.
    await _create(client, _headers(make_token, tenant, key="good"))
    assert await _rows(context, tenant) == (1, 1)

    headers = {"Content-Type": "application/json", **_headers(make_token, tenant, key=case)}
    headers.update(extra_headers)
    if headers["Content-Type"] == "":
        del headers["Content-Type"]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post("/v1/sessions", content=content, headers=headers)
    if extra_headers.get("Content-Type") == "":
        assert "content-type" not in response.request.headers

    _assert_problem(response, status, code)
    problem = response.json()
    assert problem["detail"]
    if field is not None:
        assert field in [error["field"] for error in problem["errors"]], problem["errors"]
    assert await _rows(context, tenant) == (1, 1)


def _small_body_app(context_factory: Any) -> FastAPI:
    settings = make_settings(api=ApiSettings(max_body_bytes=4096))
    return create_app(settings, context=context_factory(settings))


_BIG_BODY = {"agent": "support", "input": "x" * 5000}


async def test_a_declared_body_over_the_size_limit_is_413_and_writes_nothing(
    context_factory: Any, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    async with client_for(_small_body_app(context_factory)) as http:
        response = await http.post(
            "/v1/sessions", json=_BIG_BODY, headers=_headers(make_token, tenant, key="big")
        )
    _assert_problem(response, 413, "payload-too-large")
    assert await _rows(context, tenant) == (0, 0)


async def test_a_streamed_body_over_the_size_limit_is_413_and_writes_nothing(
    context_factory: Any, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = {**_headers(make_token, tenant, key="big"), "Content-Type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        payload = json.dumps(_BIG_BODY).encode()
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    async with client_for(_small_body_app(context_factory)) as http:
        # A streamed body declares no length; it is cut off once it passes the limit.
        response = await http.post("/v1/sessions", content=chunks(), headers=headers)
        _assert_problem(response, 413, "payload-too-large")
        assert "content-length" not in response.request.headers
        assert await _rows(context, tenant) == (0, 0)

        # The same app takes a body under the limit.
        small = await http.post(
            "/v1/sessions", json={"agent": "support", "input": "x" * 1000}, headers=headers
        )
        assert small.status_code == 202, small.text
    assert await _rows(context, tenant) == (1, 1)


# -- tenant isolation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/sessions/{id}"),
        ("POST", "/v1/sessions/{id}/cancel"),
        ("GET", "/v1/sessions/{id}/events"),
        ("GET", "/v1/sessions/{id}/tool-calls"),
    ],
)
async def test_another_tenants_session_is_404_on_every_route(
    method: str, path: str, client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    owner = _headers(make_token, tenant)
    session = await _create(client, owner)
    # Tenant B's token has every role, so only the tenant can explain a refusal.
    intruder = _headers(make_token, f"{tenant}-b", "client", "reviewer", "admin")

    response = await client.request(method, path.format(id=session["id"]), headers=intruder)
    _assert_problem(response, 404)
    assert session["id"] in response.json()["detail"]

    unknown = await client.request(method, path.format(id="ses_doesnotexist"), headers=intruder)
    assert (unknown.status_code, unknown.json()["type"]) == (404, response.json()["type"])
    after = (await client.get(f"/v1/sessions/{session['id']}", headers=owner)).json()
    assert after["status"] == "queued" and after["cancel_requested"] is False


async def test_another_tenants_sessions_are_not_listed(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    await _create(client, _headers(make_token, tenant))
    listed = await client.get("/v1/sessions", headers=_headers(make_token, f"{tenant}-b"))
    assert listed.status_code == 200
    assert listed.json() == {"items": [], "next_cursor": None}


# -- list --------------------------------------------------------------------------------------


async def _list(http: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await http.get("/v1/sessions", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_list_filters_by_status_and_agent(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant)
    await _create_agent(client, tenant, make_token, "alpha")
    await _create_agent(client, tenant, make_token, "beta")
    alpha_1 = await _create(client, headers, "alpha")
    alpha_2 = await _create(client, headers, "alpha")
    beta_1 = await _create(client, headers, "beta")
    await client.post(f"/v1/sessions/{alpha_1['id']}/cancel", headers=headers)

    def ids(page: dict[str, Any]) -> list[str]:
        return [item["id"] for item in page["items"]]

    assert ids(await _list(client, headers)) == [beta_1["id"], alpha_2["id"], alpha_1["id"]]
    assert ids(await _list(client, headers, status="queued")) == [beta_1["id"], alpha_2["id"]]
    assert ids(await _list(client, headers, status="cancelled")) == [alpha_1["id"]]
    assert ids(await _list(client, headers, status="completed")) == []
    assert ids(await _list(client, headers, agent="alpha")) == [alpha_2["id"], alpha_1["id"]]
    assert ids(await _list(client, headers, agent="beta", status="queued")) == [beta_1["id"]]
    assert ids(await _list(client, headers, agent="alpha", status="queued")) == [alpha_2["id"]]
    assert ids(await _list(client, headers, agent="gamma")) == []


async def test_list_pages_newest_first_without_duplicates_or_gaps(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant)
    created = [(await _create(client, headers))["id"] for _ in range(7)]

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = await _list(client, headers, **params)
        pages += 1
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert seen == list(reversed(created))
    assert pages == 3


async def test_list_with_an_invalid_status_is_422(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    response = await client.get(
        "/v1/sessions", params={"status": "sleeping"}, headers=_headers(make_token, tenant)
    )
    _assert_problem(response, 422, "validation-error")
    assert [error["field"] for error in response.json()["errors"]] == ["status"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!",
        _b64(b"no separator"),
        _b64(b"yesterday|ses_1"),
        "ünïcödé",
        _b64(b"\xff\xfe|\x80"),
        _b64(b"2025-01-01T00:00:00|ses_1"),
        _b64(b"9999-12-31T23:59:59-05:00|ses_1"),
    ],
    ids=[
        "word",
        "punctuation",
        "no separator",
        "not a time",
        "not ascii",
        "not utf-8",
        "no time zone",
        "time out of range",
    ],
)
async def test_list_with_a_garbage_cursor_is_422(
    cursor: str, client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    response = await client.get(
        "/v1/sessions", params={"cursor": cursor}, headers=_headers(make_token, tenant)
    )
    _assert_problem(response, 422)
    assert "cursor" in response.json()["detail"]


# -- cancel ------------------------------------------------------------------------------------


async def test_cancelling_a_queued_session_ends_it_at_once(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant)
    session = await _create(client, headers)

    response = await client.post(f"/v1/sessions/{session['id']}/cancel", headers=headers)
    assert response.status_code == 202, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancel_requested"] is True
    assert cancelled["finished_at"] is not None
    assert cancelled["error"] is not None and cancelled["error"]["code"] == "cancelled"
    assert (await client.get(f"/v1/sessions/{session['id']}", headers=headers)).json() == cancelled

    events = (await client.get(f"/v1/sessions/{session['id']}/events", headers=headers)).json()
    assert [(e["seq"], e["type"]) for e in events["items"]] == [
        (1, "session.queued"),
        (2, "session.cancelled"),
    ]
    assert events["items"][1]["data"]["status"] == "cancelled"


async def test_cancelling_twice_is_202_and_changes_nothing(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant)
    session = await _create(client, headers)
    first = await client.post(f"/v1/sessions/{session['id']}/cancel", headers=headers)
    second = await client.post(f"/v1/sessions/{session['id']}/cancel", headers=headers)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == first.json()
    events = (await client.get(f"/v1/sessions/{session['id']}/events", headers=headers)).json()
    assert [e["type"] for e in events["items"]] == ["session.queued", "session.cancelled"]


@contextlib.asynccontextmanager
async def _worker_pool(context: AppContext) -> AsyncIterator[WorkerPool]:
    """A worker pool in this process (as tests/runtime's `start_pool`), drained on exit."""
    pool = WorkerPool(
        FAST_RUNTIME,
        context.database_url,
        concurrency=2,
        session_factory=context.session_factory,
        models=context.models,
        tools=context.tools,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    try:
        yield pool
    finally:
        stop.set()
        await task


async def _wait_for(
    http: httpx.AsyncClient, headers: dict[str, str], session_id: str, status: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        session = dict((await http.get(f"/v1/sessions/{session_id}", headers=headers)).json())
        if session["status"] == status:
            return session
        assert time.monotonic() < deadline, f"session still {session['status']}: {session}"
        await asyncio.sleep(0.05)


async def test_cancelling_a_completed_session_is_409(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant)
    await _create_agent(
        client, tenant, make_token, "quick", offline={"script": [{"text": "All done."}]}
    )
    session = await _create(client, headers, "quick")

    async with _worker_pool(context):
        done = await _wait_for(client, headers, session["id"], "completed")
    assert done["result"] == "All done."

    response = await client.post(f"/v1/sessions/{session['id']}/cancel", headers=headers)
    _assert_problem(response, 409, "session-finished")
    after = (await client.get(f"/v1/sessions/{session['id']}", headers=headers)).json()
    assert after == done
    events = (await client.get(f"/v1/sessions/{session['id']}/events", headers=headers)).json()
    assert events["items"][-1]["type"] == "session.completed"


async def test_cancelling_a_running_session_ends_it_at_the_next_safe_point(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    headers = _headers(make_token, tenant)
    await _create_agent(
        client, tenant, make_token, "slow",
        offline={"script": [{"text": "thinking", "delay_ms": 30_000}]},
    )  # fmt: skip
    session = await _create(client, headers, "slow")
    async with _worker_pool(context):
        await _wait_for(client, headers, session["id"], "running")
        response = await client.post(f"/v1/sessions/{session['id']}/cancel", headers=headers)
        assert response.status_code == 202, response.text
        # Accepted now; the worker ends it at its next safe point (the model call is
        # interrupted, it has no side effects).
        assert response.json()["cancel_requested"] is True
        assert response.json()["status"] in ("running", "cancelled")
        ended = await _wait_for(client, headers, session["id"], "cancelled")
    assert ended["error"] is not None and ended["error"]["code"] == "cancelled"
    assert ended["result"] is None and ended["finished_at"] is not None
    events = (await client.get(f"/v1/sessions/{session['id']}/events", headers=headers)).json()
    assert [e["type"] for e in events["items"]] == [
        "session.queued", "session.running", "session.cancelled",
    ]  # fmt: skip


# -- roles -------------------------------------------------------------------------------------


async def test_a_reviewer_reads_sessions_but_cannot_create_or_cancel_them(
    client: httpx.AsyncClient, context: AppContext, tenant: str, make_token: TokenFactory
) -> None:
    session = await _create(client, _headers(make_token, tenant, key="by-client"))
    reviewer = _headers(make_token, tenant, "reviewer", key="by-reviewer")

    for path in ("", "/events", "/tool-calls"):
        response = await client.get(f"/v1/sessions/{session['id']}{path}", headers=reviewer)
        assert response.status_code == 200, (path, response.text)
    listed = await _list(client, reviewer)
    assert [item["id"] for item in listed["items"]] == [session["id"]]

    refused = await client.post(
        "/v1/sessions", json={"agent": "support", "input": "hi"}, headers=reviewer
    )
    _assert_problem(refused, 403, "forbidden")
    cancel = await client.post(f"/v1/sessions/{session['id']}/cancel", headers=reviewer)
    _assert_problem(cancel, 403, "forbidden")
    assert await _rows(context, tenant) == (1, 1)
    still = (await client.get(f"/v1/sessions/{session['id']}", headers=reviewer)).json()
    assert still["status"] == "queued" and still["cancel_requested"] is False


async def test_an_admin_can_do_what_a_client_can(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    admin = _headers(make_token, tenant, "admin")
    session = await _create(client, admin)
    assert session["status"] == "queued"
    assert (await client.get(f"/v1/sessions/{session['id']}", headers=admin)).status_code == 200
    cancelled = await client.post(f"/v1/sessions/{session['id']}/cancel", headers=admin)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"


async def test_sessions_need_a_token(client: httpx.AsyncClient) -> None:
    for method, path in (("POST", "/v1/sessions"), ("GET", "/v1/sessions")):
        response = await client.request(method, path, json={"agent": "support", "input": "hi"})
        _assert_problem(response, 401, "unauthorized")

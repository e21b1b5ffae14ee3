"""Webhooks through the outbox: written with the state change, delivered signed (Standard
Webhooks, verified with the `standardwebhooks` library), retried with back-off, dead after
N attempts, listed in the delivery log and replayable; URLs pass the outbound guard."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from app.api.context import AppContext
from app.main import create_app
from app.settings import WebhookSettings
from app.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import TokenFactory, bearer, client_for, make_settings
from tests.receiver import Receiver, serving
from tests.runtime_fixtures import Api, PoolFactory, script

# Delays of 0.3 s then 0.6 s (±20 %), polled every 0.05 s: the second gap is always longer.
FAST = WebhookSettings(
    max_attempts=3, backoff_base_seconds=0.3, backoff_max_seconds=5, dispatch_interval_seconds=0.05
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving(Receiver()) as app:
        yield app


@pytest.fixture
def allowlisted(
    context_factory: Callable[..., AppContext], client: httpx.AsyncClient
) -> httpx.AsyncClient:
    """A client of an app whose OUTBOUND_ALLOWLIST lets webhooks reach 127.0.0.1."""
    settings = make_settings(outbound_allowlist=["127.0.0.1"])
    return client_for(create_app(settings, context=context_factory(settings)))


async def _wait_for(predicate: Callable[[], bool], within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def _secret(api: Api) -> str:
    response = await api.http.get("/v1/webhooks/settings", headers=api.headers)
    assert response.status_code == 200
    return str(response.json()["secret"])


async def test_a_finished_session_is_delivered_signed_and_verifiable(
    allowlisted: httpx.AsyncClient,
    tenant: str,
    make_token: TokenFactory,
    receiver: Receiver,
    start_pool: PoolFactory,
) -> None:
    api = Api(allowlisted, tenant, make_token)
    await api.create_agent(name="hooked", **script({"text": "all done"}))
    secret = await _secret(api)
    session = await api.start("hooked", "go", webhook_url=receiver.url("/echo/hook1"))
    await start_pool(webhooks=WebhookDispatcher(FAST, ["127.0.0.1"]))
    await _wait_for(lambda: bool(receiver.hits("/echo/hook1")))
    hit = receiver.hits("/echo/hook1")[0]
    payload = Webhook(secret).verify(hit.body, hit.headers)  # raises if the signature is wrong
    assert payload["type"] == "session.completed"
    assert payload["data"]["session"]["id"] == session["id"]
    assert payload["data"]["session"]["result"] == "all done"
    assert hit.headers["webhook-id"].startswith("whd_")
    deliveries = (await api.http.get("/v1/webhooks/deliveries", headers=api.headers)).json()[
        "items"
    ]
    assert deliveries[0]["status"] == "delivered" and deliveries[0]["attempts"] == 1
    assert deliveries[0]["attempt_log"][0]["status_code"] == 200
    await allowlisted.aclose()


async def test_failures_are_retried_with_backoff_then_dead_then_replayable(
    allowlisted: httpx.AsyncClient,
    tenant: str,
    make_token: TokenFactory,
    receiver: Receiver,
    start_pool: PoolFactory,
) -> None:
    api = Api(allowlisted, tenant, make_token)
    await api.create_agent(name="hooked", **script({"text": "done"}))
    flaky = await api.start("hooked", "a", webhook_url=receiver.url("/flaky/2/x"))
    broken = await api.start("hooked", "b", webhook_url=receiver.url("/status/503/y"))
    await start_pool(webhooks=WebhookDispatcher(FAST, ["127.0.0.1"]))
    await api.wait(flaky["id"])
    await api.wait(broken["id"])

    async def deliveries(status: str) -> list[dict[str, Any]]:
        response = await api.http.get(
            "/v1/webhooks/deliveries", params={"status": status}, headers=api.headers
        )
        return list(response.json()["items"])

    for _ in range(200):
        if await deliveries("delivered") and await deliveries("dead"):
            break
        await asyncio.sleep(0.1)
    delivered, dead = await deliveries("delivered"), await deliveries("dead")
    assert [d["session_id"] for d in delivered] == [flaky["id"]]
    assert delivered[0]["attempts"] == 3 and [
        a["status_code"] for a in delivered[0]["attempt_log"]
    ] == [500, 500, 200]
    assert [d["session_id"] for d in dead] == [broken["id"]]
    assert dead[0]["attempts"] == FAST.max_attempts and dead[0]["last_status_code"] == 503
    assert len(receiver.hits("/status/503/y")) == FAST.max_attempts
    # The delays between attempts grow (exponential back-off; jitter is ±20 %).
    times = [datetime.fromisoformat(a["at"]) for a in delivered[0]["attempt_log"]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps[1] > gaps[0], gaps
    # The receiver got the same webhook-id each time (so it can dedupe retries).
    assert len({hit.headers["webhook-id"] for hit in receiver.hits("/flaky/2/x")}) == 1

    replay = await api.http.post(
        f"/v1/webhooks/deliveries/{dead[0]['delivery_id']}/retry", headers=api.headers
    )
    assert replay.status_code == 202 and replay.json()["status"] == "pending"
    await _wait_for(lambda: len(receiver.hits("/status/503/y")) > FAST.max_attempts)
    await allowlisted.aclose()


async def test_tenant_default_url_applies_and_cancel_is_announced(
    allowlisted: httpx.AsyncClient,
    tenant: str,
    make_token: TokenFactory,
    receiver: Receiver,
    start_pool: PoolFactory,
) -> None:
    api = Api(allowlisted, tenant, make_token)
    await api.create_agent(name="hooked", **script({"text": "x"}))
    put = await api.http.put(
        "/v1/webhooks/settings",
        json={"default_url": receiver.url("/echo/default")},
        headers=api.headers,
    )
    assert put.status_code == 200 and put.json()["default_url"].endswith("/echo/default")
    session = await api.start("hooked", "never runs")
    await api.http.post(f"/v1/sessions/{session['id']}/cancel", headers=api.headers)
    await start_pool(webhooks=WebhookDispatcher(FAST, ["127.0.0.1"]))
    await _wait_for(lambda: bool(receiver.hits("/echo/default")))
    payload = json.loads(receiver.hits("/echo/default")[0].body)
    assert (
        payload["type"] == "session.cancelled"
        and payload["data"]["session"]["error"]["code"] == "cancelled"
    )
    await allowlisted.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest",
        "http://10.0.0.7/hook",
        "http://localhost/h",
    ],
)
async def test_private_webhook_urls_are_refused_unless_allowlisted(api: Api, url: str) -> None:
    response = await api.http.post(
        "/v1/sessions",
        json={"agent": "support", "input": "x", "webhook_url": url},
        headers=api.headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "webhook_url"
    settings = await api.http.put(
        "/v1/webhooks/settings", json={"default_url": url}, headers=api.headers
    )
    assert settings.status_code == 422


async def test_webhook_admin_routes_need_the_admin_role(
    client: httpx.AsyncClient, tenant: str, make_token: TokenFactory
) -> None:
    headers = bearer(make_token(tenant, roles=("client", "reviewer")))
    for method, path in (("GET", "/v1/webhooks/deliveries"), ("GET", "/v1/webhooks/settings")):
        assert (await client.request(method, path, headers=headers)).status_code == 403


async def test_a_state_change_is_delivered_even_if_its_worker_died_before_delivering(
    allowlisted: httpx.AsyncClient,
    tenant: str,
    make_token: TokenFactory,
    receiver: Receiver,
    start_pool: PoolFactory,
) -> None:
    api = Api(allowlisted, tenant, make_token)
    await api.create_agent(name="hooked", **script({"text": "done"}))
    # A worker with no dispatcher finishes the session: the webhook waits in the outbox,
    # as it would if the worker had died right after the state change committed.
    await start_pool()
    session = await api.start("hooked", "go", webhook_url=receiver.url("/echo/outbox"))
    await api.wait(session["id"])
    pending = await api.http.get(
        "/v1/webhooks/deliveries", params={"status": "pending"}, headers=api.headers
    )
    assert [d["session_id"] for d in pending.json()["items"]] == [session["id"]]
    assert not receiver.hits("/echo/outbox")
    await start_pool(webhooks=WebhookDispatcher(FAST, ["127.0.0.1"]))  # another process
    await _wait_for(lambda: bool(receiver.hits("/echo/outbox")))
    await allowlisted.aclose()
